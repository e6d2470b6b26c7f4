using System;
using System.Buffers.Binary;
using System.Collections.Generic;
using System.IO;
using System.IO.Compression;
using System.IO.Hashing;
using System.Text;

namespace EmaGen.Dcp.Zip;

/// <summary>One record of a torch.save archive: its name without the archive prefix and where its bytes are.</summary>
/// <param name="Name">Name below the archive folder, e.g. <c>data.pkl</c> or <c>data/0</c>.</param>
/// <param name="DataOffset">Offset of the (possibly compressed) data, relative to the archive start.</param>
/// <param name="CompressedSize">Bytes stored.</param>
/// <param name="Size">Bytes after decompression.</param>
/// <param name="Crc">CRC-32 from the central directory.</param>
/// <param name="Method">0 stored (what PyTorch writes) or 8 deflate.</param>
internal sealed record ArchiveRecord(string Name, long DataOffset, long CompressedSize, long Size, uint Crc, ushort Method);

/// <summary>
/// Reads a torch.save archive that occupies <c>[offset, offset + length)</c> of a seekable stream (a DCP item inside a
/// <c>.distcp</c> file, or a whole file). Tolerates any archive prefix, ZIP64 records and end records, data
/// descriptors, zero-length records and deflated records. Every offset and size is checked against the slice; a
/// damaged archive is a <see cref="CheckpointFormatException"/> naming the source.
/// </summary>
internal sealed class TorchArchiveReader
{
    private const int MaxSmallRecord = 64 << 20;
    private readonly Stream _stream;
    private readonly long _base;
    private readonly long _length;
    private readonly string _source;
    private readonly Dictionary<string, ArchiveRecord> _records = new(StringComparer.Ordinal);

    private TorchArchiveReader(Stream stream, long offset, long length, string source)
    {
        _stream = stream;
        _base = offset;
        _length = length;
        _source = source;
    }

    /// <summary>The archive folder name (DCP: "archive").</summary>
    public string Prefix { get; private set; } = "";

    public IReadOnlyCollection<ArchiveRecord> Records => _records.Values;

    public static TorchArchiveReader Open(Stream stream, long offset, long length, string source)
    {
        var reader = new TorchArchiveReader(stream, offset, length, source);
        if (offset < 0 || length < 22 || offset + length > stream.Length)
        {
            throw reader.Error($"item [{offset}, {offset + length}) does not fit the {stream.Length}-byte file or is too short for a ZIP");
        }
        reader.ReadDirectory();
        return reader;
    }

    public bool TryGet(string name, out ArchiveRecord record) => _records.TryGetValue(name, out record!);

    public ArchiveRecord Get(string name) =>
        _records.TryGetValue(name, out var r) ? r : throw Error($"record '{Prefix}/{name}' is missing");

    /// <summary>A small record's bytes (pickles, version strings), CRC-checked.</summary>
    public byte[] ReadAll(ArchiveRecord record)
    {
        if (record.Size > MaxSmallRecord) throw Error($"record '{record.Name}' has {record.Size} bytes; at most {MaxSmallRecord} expected");
        var bytes = new byte[record.Size];
        ReadInto(record, bytes);
        return bytes;
    }

    /// <summary>Reads a record into <paramref name="destination"/> (exactly its size), checking the CRC.</summary>
    public void ReadInto(ArchiveRecord record, Span<byte> destination)
    {
        if (destination.Length != record.Size) throw Error($"record '{record.Name}' has {record.Size} bytes, {destination.Length} expected");
        var crc = new Crc32();
        if (record.Method == 0)
        {
            _stream.Position = _base + record.DataOffset;
            _stream.ReadExactly(destination);
            crc.Append(destination);
        }
        else
        {
            _stream.Position = _base + record.DataOffset;
            using var window = new BoundedReadStream(_stream, record.CompressedSize);
            using var inflate = new DeflateStream(window, CompressionMode.Decompress);
            try
            {
                inflate.ReadExactly(destination);
            }
            catch (Exception e) when (e is InvalidDataException or EndOfStreamException)
            {
                throw Error($"record '{record.Name}' does not inflate: {e.Message}");
            }
            crc.Append(destination);
        }
        CheckCrc(record, crc.GetCurrentHashAsUInt32());
    }

    /// <summary>
    /// Bytes <c>[offset, offset + count)</c> of a stored record, into native memory: how a rank reads only its rows of a
    /// saved chunk. Every byte returned is CRC-checked: with <paramref name="blockCrcs"/> (an EmaGen item's seal) only the
    /// <paramref name="blockSize"/> blocks the range touches are read and checked; without, the whole record is read
    /// through a small buffer to check its CRC-32 and only the range is kept. Returns the record bytes read.
    /// </summary>
    public unsafe long ReadRange(ArchiveRecord record, long offset, byte* destination, long count, int blockSize = 0, uint[]? blockCrcs = null)
    {
        if (record.Method != 0) throw Error($"record '{record.Name}' is compressed; a byte range cannot be read from it");
        if (offset < 0 || count < 0 || offset + count > record.Size) throw Error($"bytes [{offset}, {offset + count}) lie outside record '{record.Name}' of {record.Size} bytes");
        if (count == 0) return 0;
        bool blocks = blockCrcs is not null && blockSize > 0;
        if (blocks && (record.Size + blockSize - 1) / blockSize != blockCrcs!.Length)
        {
            throw Error($"record '{record.Name}' has {record.Size} bytes but {blockCrcs.Length} block checksums of {blockSize} bytes");
        }
        int piece = blocks ? blockSize : 1 << 20;
        long first = blocks ? offset / blockSize * blockSize : 0;
        long end = blocks ? Math.Min(record.Size, (offset + count + blockSize - 1) / blockSize * blockSize) : record.Size;
        var buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(piece);
        try
        {
            var whole = new Crc32();
            _stream.Position = _base + record.DataOffset + first;
            for (long at = first; at < end; at += piece)
            {
                var span = buffer.AsSpan(0, (int)Math.Min(piece, end - at));
                _stream.ReadExactly(span);
                if (blocks)
                {
                    long b = at / blockSize;
                    uint crc = Crc32.HashToUInt32(span);
                    if (crc != blockCrcs![b])
                    {
                        throw Error($"block {b} of record '{record.Name}' fails its CRC-32 check (sealed 0x{blockCrcs[b]:x8}, computed 0x{crc:x8})");
                    }
                }
                else
                {
                    whole.Append(span);
                }
                long lo = Math.Max(at, offset), hi = Math.Min(at + span.Length, offset + count);
                if (lo < hi) span.Slice((int)(lo - at), (int)(hi - lo)).CopyTo(new Span<byte>(destination + (lo - offset), (int)(hi - lo)));
            }
            if (!blocks) CheckCrc(record, whole.GetCurrentHashAsUInt32());
            return end - first;
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Reads a large record into native memory in pieces (no managed buffer in between).</summary>
    public unsafe void ReadInto(ArchiveRecord record, byte* destination, long count)
    {
        if (count != record.Size) throw Error($"record '{record.Name}' has {record.Size} bytes, {count} expected");
        if (record.Method != 0)
        {
            if (count > int.MaxValue) throw Error($"deflated record '{record.Name}' is too large");
            ReadInto(record, new Span<byte>(destination, (int)count));
            return;
        }
        var crc = new Crc32();
        _stream.Position = _base + record.DataOffset;
        for (long done = 0; done < count;)
        {
            int piece = (int)Math.Min(count - done, 1 << 30);
            var span = new Span<byte>(destination + done, piece);
            _stream.ReadExactly(span);
            crc.Append(span);
            done += piece;
        }
        CheckCrc(record, crc.GetCurrentHashAsUInt32());
    }

    private void CheckCrc(ArchiveRecord record, uint computed)
    {
        if (computed != record.Crc)
        {
            throw Error($"record '{record.Name}' fails its CRC-32 check (stored 0x{record.Crc:x8}, computed 0x{computed:x8})");
        }
    }

    private void ReadDirectory()
    {
        // The end record is the last thing in the archive, followed by a comment of at most 64 KiB.
        int tail = (int)Math.Min(_length, 22 + 0xFFFF);
        var end = ReadBytes(_length - tail, tail);
        int eocd = -1;
        for (int i = end.Length - 22; i >= 0; i--)
        {
            if (BinaryPrimitives.ReadUInt32LittleEndian(end.AsSpan(i)) == 0x06054b50) { eocd = i; break; }
        }
        if (eocd < 0) throw Error("no ZIP end-of-central-directory record");
        long eocdAt = _length - tail + eocd;
        long entries = BinaryPrimitives.ReadUInt16LittleEndian(end.AsSpan(eocd + 10));
        long cdSize = BinaryPrimitives.ReadUInt32LittleEndian(end.AsSpan(eocd + 12));
        long cdOffset = BinaryPrimitives.ReadUInt32LittleEndian(end.AsSpan(eocd + 16));

        if (eocdAt >= 20)
        {
            var locator = ReadBytes(eocdAt - 20, 20);
            if (BinaryPrimitives.ReadUInt32LittleEndian(locator) == 0x07064b50)
            {
                long zip64At = (long)Math.Min(BinaryPrimitives.ReadUInt64LittleEndian(locator.AsSpan(8)), long.MaxValue);
                CheckRange(zip64At, 56, "ZIP64 end record");
                var z = ReadBytes(zip64At, 56);
                if (BinaryPrimitives.ReadUInt32LittleEndian(z) != 0x06064b50) throw Error("ZIP64 locator does not point at a ZIP64 end record");
                entries = Checked(BinaryPrimitives.ReadUInt64LittleEndian(z.AsSpan(32)), "entry count");
                cdSize = Checked(BinaryPrimitives.ReadUInt64LittleEndian(z.AsSpan(40)), "central directory size");
                cdOffset = Checked(BinaryPrimitives.ReadUInt64LittleEndian(z.AsSpan(48)), "central directory offset");
            }
        }
        CheckRange(cdOffset, cdSize, "central directory");
        if (entries > cdSize / 46) throw Error($"{entries} entries cannot fit a {cdSize}-byte central directory");
        var cd = ReadBytes(cdOffset, (int)Math.Min(cdSize, int.MaxValue));
        int p = 0;
        for (long i = 0; i < entries; i++)
        {
            if (p + 46 > cd.Length || BinaryPrimitives.ReadUInt32LittleEndian(cd.AsSpan(p)) != 0x02014b50) throw Error($"central directory entry {i} is damaged");
            ushort method = BinaryPrimitives.ReadUInt16LittleEndian(cd.AsSpan(p + 10));
            uint crc = BinaryPrimitives.ReadUInt32LittleEndian(cd.AsSpan(p + 16));
            long compressed = BinaryPrimitives.ReadUInt32LittleEndian(cd.AsSpan(p + 20));
            long size = BinaryPrimitives.ReadUInt32LittleEndian(cd.AsSpan(p + 24));
            int nameLength = BinaryPrimitives.ReadUInt16LittleEndian(cd.AsSpan(p + 28));
            int extraLength = BinaryPrimitives.ReadUInt16LittleEndian(cd.AsSpan(p + 30));
            int commentLength = BinaryPrimitives.ReadUInt16LittleEndian(cd.AsSpan(p + 32));
            long headerOffset = BinaryPrimitives.ReadUInt32LittleEndian(cd.AsSpan(p + 42));
            if (p + 46 + nameLength + extraLength + commentLength > cd.Length) throw Error($"central directory entry {i} runs past the directory");
            var name = Encoding.UTF8.GetString(cd, p + 46, nameLength);
            ReadZip64Extra(cd.AsSpan(p + 46 + nameLength, extraLength), ref size, ref compressed, ref headerOffset);
            p += 46 + nameLength + extraLength + commentLength;

            if (method != 0 && method != 8) throw Error($"record '{name}' uses compression method {method} (stored or deflate expected)");
            if (method == 0 && compressed != size) throw Error($"stored record '{name}' has different compressed and plain sizes");
            // DEFLATE cannot expand data more than about 1032 times; a larger claim is a lie meant to make readers allocate.
            if (method == 8 && size > compressed * 1032 + 1024) throw Error($"deflated record '{name}' claims {size} bytes from {compressed}, more than DEFLATE can produce");
            CheckRange(headerOffset, 30, $"local header of '{name}'");
            var local = ReadBytes(headerOffset, 30);
            if (BinaryPrimitives.ReadUInt32LittleEndian(local) != 0x04034b50) throw Error($"local header of '{name}' is damaged");
            long dataOffset = headerOffset + 30 + BinaryPrimitives.ReadUInt16LittleEndian(local.AsSpan(26)) + BinaryPrimitives.ReadUInt16LittleEndian(local.AsSpan(28));
            CheckRange(dataOffset, compressed, $"data of '{name}'");

            int slash = name.IndexOf('/');
            if (i == 0) Prefix = slash < 0 ? "" : name[..slash];
            string shortName = Prefix.Length > 0 && name.StartsWith(Prefix + "/", StringComparison.Ordinal) ? name[(Prefix.Length + 1)..] : name;
            _records[shortName] = new ArchiveRecord(shortName, dataOffset, compressed, size, crc, method);
        }
    }

    private void ReadZip64Extra(ReadOnlySpan<byte> extra, ref long size, ref long compressed, ref long offset)
    {
        while (extra.Length >= 4)
        {
            ushort id = BinaryPrimitives.ReadUInt16LittleEndian(extra);
            int length = BinaryPrimitives.ReadUInt16LittleEndian(extra[2..]);
            if (4 + length > extra.Length) throw Error("extra field runs past its entry");
            var field = extra.Slice(4, length);
            if (id == 1)
            {
                int at = 0;
                if (size == 0xFFFFFFFF) { size = Field(field, ref at); }
                if (compressed == 0xFFFFFFFF) { compressed = Field(field, ref at); }
                if (offset == 0xFFFFFFFF) { offset = Field(field, ref at); }
            }
            extra = extra[(4 + length)..];
        }
    }

    private long Field(ReadOnlySpan<byte> field, ref int at)
    {
        if (at + 8 > field.Length) throw Error("ZIP64 extra field is too short");
        long value = Checked(BinaryPrimitives.ReadUInt64LittleEndian(field[at..]), "ZIP64 field");
        at += 8;
        return value;
    }

    private long Checked(ulong value, string what) =>
        value > (ulong)_length ? throw Error($"{what} {value} is beyond the {_length}-byte archive") : (long)value;

    private void CheckRange(long offset, long count, string what)
    {
        if (offset < 0 || count < 0 || offset > _length || count > _length - offset)
        {
            throw Error($"{what} [{offset}, {offset + count}) lies outside the {_length}-byte archive");
        }
    }

    private byte[] ReadBytes(long offset, int count)
    {
        CheckRange(offset, count, "read");
        var bytes = new byte[count];
        _stream.Position = _base + offset;
        _stream.ReadExactly(bytes);
        return bytes;
    }

    private CheckpointFormatException Error(string message) => new($"{_source}: {message}.");

    /// <summary>Exposes at most <c>limit</c> bytes of a stream from its current position (for deflated records).</summary>
    private sealed class BoundedReadStream : Stream
    {
        private readonly Stream _inner;
        private long _left;

        public BoundedReadStream(Stream inner, long limit)
        {
            _inner = inner;
            _left = limit;
        }

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));
        public override int Read(Span<byte> buffer)
        {
            if (_left <= 0) return 0;
            int n = _inner.Read(buffer[..(int)Math.Min(buffer.Length, _left)]);
            _left -= n;
            return n;
        }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}

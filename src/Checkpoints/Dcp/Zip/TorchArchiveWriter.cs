using System;
using System.Buffers.Binary;
using System.Collections.Generic;
using System.IO;
using System.IO.Hashing;
using System.Text;

namespace EmaGen.Dcp.Zip;

/// <summary>
/// Writes one torch.save archive (an uncompressed ZIP64 archive as PyTorch's <c>PyTorchStreamWriter</c> makes it) to a
/// stream: stored records whose data starts 64-byte aligned relative to the archive start (padding in an "FB" extra
/// field), data descriptors with CRC-32, a central directory, and always the ZIP64 end record and locator before the
/// classic end record. Record data can be streamed from native memory without a managed copy.
/// </summary>
internal sealed class TorchArchiveWriter
{
    private const int Alignment = 64;
    private const uint Zip64Marker = 0xFFFFFFFF;

    private readonly Stream _out;
    private readonly string _prefix;
    private readonly bool _forceZip64;
    private readonly List<Entry> _entries = new();
    private long _position;

    private sealed record Entry(string Name, long HeaderOffset, long Size, uint Crc, bool Zip64);

    /// <param name="output">Where the archive goes; written sequentially.</param>
    /// <param name="prefix">The archive folder (DCP uses "archive").</param>
    /// <param name="forceZip64">Write ZIP64 sizes and offsets for every record (tests the large-file path without writing 4 GiB).</param>
    public TorchArchiveWriter(Stream output, string prefix = "archive", bool forceZip64 = false)
    {
        _out = output;
        _prefix = prefix;
        _forceZip64 = forceZip64;
    }

    /// <summary>The checksum task of the last record added from native memory (tests check it ended before a failed write returned).</summary>
    internal System.Threading.Tasks.Task? LastChecksum { get; private set; }

    /// <summary>Bytes written so far (the archive's length once <see cref="Finish"/> has run).</summary>
    public long Length => _position;

    public void AddRecord(string name, ReadOnlySpan<byte> data)
    {
        var crc = new Crc32();
        crc.Append(data);
        bool zip64 = BeginRecord(name, data.Length);
        Write(data);
        EndRecord(name, data.Length, crc.GetCurrentHashAsUInt32(), zip64);
    }

    public void AddText(string name, string text) => AddRecord(name, Encoding.ASCII.GetBytes(text));

    /// <summary>
    /// Adds a record from native memory (tensor data), in pieces of at most 1 GiB so records over 2 GiB work. The
    /// CRC-32 of the whole record and of every <paramref name="blockSize"/> block (for <see cref="Dcp.ItemSeal"/>) are
    /// computed on another core while the bytes are written.
    /// </summary>
    public unsafe void AddRecord(string name, byte* data, long size, int blockSize, out uint[] blockCrcs)
    {
        const long Piece = 1 << 30;
        bool zip64 = BeginRecord(name, size);
        var address = (nint)data;
        var crcTask = size < (1 << 20)
            ? System.Threading.Tasks.Task.FromResult(Checksum(address, size, blockSize))
            : System.Threading.Tasks.Task.Run(() => Checksum(address, size, blockSize));
        LastChecksum = crcTask;
        try
        {
            for (long done = 0; done < size;)
            {
                int piece = (int)Math.Min(size - done, Piece);
                Write(new ReadOnlySpan<byte>(data + done, piece));
                done += piece;
            }
        }
        catch
        {
            // The checksum task reads the caller's memory, which the caller may free once this throws: it must end first
            // (WaitAny, unlike Wait, does not throw, so the write's failure is the one reported).
            System.Threading.Tasks.Task.WaitAny(crcTask);
            throw;
        }
        var (crc, blocks) = crcTask.GetAwaiter().GetResult();
        blockCrcs = blocks;
        EndRecord(name, size, crc, zip64);
    }

    private static unsafe (uint Whole, uint[] Blocks) Checksum(nint address, long size, int blockSize)
    {
        var whole = new Crc32();
        var blocks = new uint[(size + blockSize - 1) / blockSize];
        for (long b = 0; b < blocks.Length; b++)
        {
            long start = b * blockSize;
            var span = new ReadOnlySpan<byte>((byte*)address + start, (int)Math.Min(blockSize, size - start));
            whole.Append(span);
            blocks[b] = Crc32.HashToUInt32(span);
        }
        return (whole.GetCurrentHashAsUInt32(), blocks);
    }

    /// <summary>Writes the central directory and end records.</summary>
    public void Finish()
    {
        long cdStart = _position;
        Span<byte> h = stackalloc byte[46];
        Span<byte> x = stackalloc byte[28];
        foreach (var e in _entries)
        {
            var name = FullName(e.Name);
            int extraLength = e.Zip64 ? 28 : 0;
            BinaryPrimitives.WriteUInt32LittleEndian(h, 0x02014b50);
            BinaryPrimitives.WriteUInt16LittleEndian(h[4..], 0); // made by
            BinaryPrimitives.WriteUInt16LittleEndian(h[6..], (ushort)(e.Zip64 ? 45 : 0)); // needed
            BinaryPrimitives.WriteUInt16LittleEndian(h[8..], Flags(e.Size));
            BinaryPrimitives.WriteUInt16LittleEndian(h[10..], 0); // stored
            BinaryPrimitives.WriteUInt32LittleEndian(h[12..], 0); // time, date
            BinaryPrimitives.WriteUInt32LittleEndian(h[16..], e.Crc);
            BinaryPrimitives.WriteUInt32LittleEndian(h[20..], e.Zip64 ? Zip64Marker : (uint)e.Size);
            BinaryPrimitives.WriteUInt32LittleEndian(h[24..], e.Zip64 ? Zip64Marker : (uint)e.Size);
            BinaryPrimitives.WriteUInt16LittleEndian(h[28..], (ushort)name.Length);
            BinaryPrimitives.WriteUInt16LittleEndian(h[30..], (ushort)extraLength);
            BinaryPrimitives.WriteUInt16LittleEndian(h[32..], 0); // comment
            BinaryPrimitives.WriteUInt32LittleEndian(h[34..], 0); // disk, internal attributes
            BinaryPrimitives.WriteUInt32LittleEndian(h[38..], 0); // external attributes
            BinaryPrimitives.WriteUInt32LittleEndian(h[42..], e.Zip64 ? Zip64Marker : (uint)e.HeaderOffset);
            Write(h);
            Write(name);
            if (e.Zip64)
            {
                BinaryPrimitives.WriteUInt16LittleEndian(x, 1);
                BinaryPrimitives.WriteUInt16LittleEndian(x[2..], 24);
                BinaryPrimitives.WriteUInt64LittleEndian(x[4..], (ulong)e.Size);
                BinaryPrimitives.WriteUInt64LittleEndian(x[12..], (ulong)e.Size);
                BinaryPrimitives.WriteUInt64LittleEndian(x[20..], (ulong)e.HeaderOffset);
                Write(x);
            }
        }
        long cdSize = _position - cdStart;
        long zip64End = _position;

        Span<byte> z = stackalloc byte[56];
        BinaryPrimitives.WriteUInt32LittleEndian(z, 0x06064b50);
        BinaryPrimitives.WriteUInt64LittleEndian(z[4..], 44);
        BinaryPrimitives.WriteUInt16LittleEndian(z[12..], 0x031e);
        BinaryPrimitives.WriteUInt16LittleEndian(z[14..], 0x002d);
        BinaryPrimitives.WriteUInt32LittleEndian(z[16..], 0);
        BinaryPrimitives.WriteUInt32LittleEndian(z[20..], 0);
        BinaryPrimitives.WriteUInt64LittleEndian(z[24..], (ulong)_entries.Count);
        BinaryPrimitives.WriteUInt64LittleEndian(z[32..], (ulong)_entries.Count);
        BinaryPrimitives.WriteUInt64LittleEndian(z[40..], (ulong)cdSize);
        BinaryPrimitives.WriteUInt64LittleEndian(z[48..], (ulong)cdStart);
        Write(z);

        Span<byte> l = stackalloc byte[20];
        BinaryPrimitives.WriteUInt32LittleEndian(l, 0x07064b50);
        BinaryPrimitives.WriteUInt32LittleEndian(l[4..], 0);
        BinaryPrimitives.WriteUInt64LittleEndian(l[8..], (ulong)zip64End);
        BinaryPrimitives.WriteUInt32LittleEndian(l[16..], 1);
        Write(l);

        bool big = _forceZip64 || cdStart >= Zip64Marker || cdSize >= Zip64Marker || _entries.Count >= 0xFFFF;
        Span<byte> eocd = stackalloc byte[22];
        BinaryPrimitives.WriteUInt32LittleEndian(eocd, 0x06054b50);
        BinaryPrimitives.WriteUInt32LittleEndian(eocd[4..], 0);
        BinaryPrimitives.WriteUInt16LittleEndian(eocd[8..], big ? (ushort)0xFFFF : (ushort)_entries.Count);
        BinaryPrimitives.WriteUInt16LittleEndian(eocd[10..], big ? (ushort)0xFFFF : (ushort)_entries.Count);
        BinaryPrimitives.WriteUInt32LittleEndian(eocd[12..], big ? Zip64Marker : (uint)cdSize);
        BinaryPrimitives.WriteUInt32LittleEndian(eocd[16..], big ? Zip64Marker : (uint)cdStart);
        BinaryPrimitives.WriteUInt16LittleEndian(eocd[20..], 0);
        Write(eocd);
    }

    private bool BeginRecord(string name, long size)
    {
        var fullName = FullName(name);
        bool zip64 = _forceZip64 || size >= Zip64Marker || _position >= Zip64Marker;
        int zip64Extra = zip64 ? 20 : 0;
        long beforePadding = _position + 30 + fullName.Length + zip64Extra + 4;
        int padding = (int)((Alignment - beforePadding % Alignment) % Alignment);

        Span<byte> h = stackalloc byte[30];
        BinaryPrimitives.WriteUInt32LittleEndian(h, 0x04034b50);
        BinaryPrimitives.WriteUInt16LittleEndian(h[4..], (ushort)(zip64 ? 45 : 0));
        BinaryPrimitives.WriteUInt16LittleEndian(h[6..], Flags(size));
        BinaryPrimitives.WriteUInt16LittleEndian(h[8..], 0);
        BinaryPrimitives.WriteUInt32LittleEndian(h[10..], 0);
        BinaryPrimitives.WriteUInt32LittleEndian(h[14..], 0);
        BinaryPrimitives.WriteUInt32LittleEndian(h[18..], zip64 ? Zip64Marker : 0);
        BinaryPrimitives.WriteUInt32LittleEndian(h[22..], zip64 ? Zip64Marker : 0);
        BinaryPrimitives.WriteUInt16LittleEndian(h[26..], (ushort)fullName.Length);
        BinaryPrimitives.WriteUInt16LittleEndian(h[28..], (ushort)(zip64Extra + 4 + padding));
        _entries.Add(new Entry(name, _position, size, 0, zip64));
        Write(h);
        Write(fullName);
        if (zip64)
        {
            // The local header's sizes live in the data descriptor (flag bit 3); the ZIP64 field is zero here.
            Span<byte> x = stackalloc byte[20];
            BinaryPrimitives.WriteUInt16LittleEndian(x, 1);
            BinaryPrimitives.WriteUInt16LittleEndian(x[2..], 16);
            BinaryPrimitives.WriteUInt64LittleEndian(x[4..], 0);
            BinaryPrimitives.WriteUInt64LittleEndian(x[12..], 0);
            Write(x);
        }
        Span<byte> fb = stackalloc byte[4 + padding];
        fb[0] = (byte)'F';
        fb[1] = (byte)'B';
        BinaryPrimitives.WriteUInt16LittleEndian(fb[2..], (ushort)padding);
        fb[4..].Fill((byte)'Z');
        Write(fb);
        return zip64;
    }

    private void EndRecord(string name, long size, uint crc, bool zip64)
    {
        _entries[^1] = _entries[^1] with { Crc = crc };
        if (size == 0) return; // a zero-length record has no data descriptor (flags 0x0800)
        Span<byte> d = stackalloc byte[24];
        BinaryPrimitives.WriteUInt32LittleEndian(d, 0x08074b50);
        BinaryPrimitives.WriteUInt32LittleEndian(d[4..], crc);
        if (zip64)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(d[8..], (ulong)size);
            BinaryPrimitives.WriteUInt64LittleEndian(d[16..], (ulong)size);
            Write(d);
        }
        else
        {
            BinaryPrimitives.WriteUInt32LittleEndian(d[8..], (uint)size);
            BinaryPrimitives.WriteUInt32LittleEndian(d[12..], (uint)size);
            Write(d[..16]);
        }
    }

    private static ushort Flags(long size) => size == 0 ? (ushort)0x0800 : (ushort)0x0808;

    private byte[] FullName(string name) => Encoding.UTF8.GetBytes(_prefix + "/" + name);

    private void Write(ReadOnlySpan<byte> bytes)
    {
        _out.Write(bytes);
        _position += bytes.Length;
    }
}

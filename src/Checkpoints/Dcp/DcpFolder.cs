using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using EmaGen.Dcp.Zip;

namespace EmaGen.Dcp;

/// <summary>
/// Reads a DCP folder written by PyTorch (2.x or 1.13) or by EmaGen: any number of files per rank, items in any order,
/// chunked tensors (assembled, or only the part overlapping a requested box), non-tensor values decoded to plain
/// values or kept as raw bytes. Every failure is a <see cref="CheckpointFormatException"/> naming the file and key.
/// Tensors are read into memory the caller allocates (the runtime's <c>DcpReader</c> reads into TorchSharp tensors)
/// or into <see cref="HostTensor"/>s.
/// </summary>
internal sealed class DcpFolder : IDcpValues
{
    private readonly SaveBinding _saves;

    private DcpFolder(string directory, DcpMetadata metadata)
    {
        Directory = directory;
        Metadata = metadata;
        _saves = new SaveBinding(directory, metadata.SaveId);
    }

    public string Directory { get; }

    public DcpMetadata Metadata { get; }

    public IReadOnlyList<DcpEntry> Entries => Metadata.Entries;

    /// <summary>Tensor data bytes read so far (a slice of a saved chunk reads only its rows' bytes).</summary>
    public long BytesRead { get; private set; }

    /// <summary>Reads the <c>.metadata</c> of <paramref name="directory"/>.</summary>
    public static DcpFolder Open(string directory)
    {
        var path = Path.Combine(directory, ".metadata");
        if (!System.IO.Directory.Exists(directory)) throw new DirectoryNotFoundException($"Checkpoint folder '{directory}' does not exist.");
        if (!File.Exists(path))
        {
            throw new CheckpointFormatException(File.Exists(path + ".tmp")
                ? $"{directory}: only .metadata.tmp exists; the save that wrote it did not finish."
                : $"{directory}: no .metadata file; not a DCP checkpoint folder.");
        }
        byte[] bytes;
        try
        {
            var info = new FileInfo(path);
            if (info.Length > 1L << 30) throw new CheckpointFormatException($"{path}: {info.Length} bytes is too large for checkpoint metadata.");
            bytes = CheckpointFiles.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException && e is not CheckpointFormatException)
        {
            throw new CheckpointFormatException($"{path}: cannot be read: {e.Message}", e);
        }
        return new DcpFolder(directory, DcpMetadataReader.Read(bytes, path));
    }

    /// <summary>The whole tensor stored under <paramref name="key"/> (caller-owned), assembled from its chunks.</summary>
    public HostTensor ReadTensor(string key)
    {
        var entry = TensorEntry(key);
        return ReadSlice(entry, new long[entry.Size.Length], entry.Size);
    }

    /// <summary>
    /// The box <c>[offsets, offsets + sizes)</c> of tensor <paramref name="key"/>, read from the chunks that overlap it
    /// (others are not touched): how a rank loads its shard of any saved chunking.
    /// </summary>
    public HostTensor ReadSlice(string key, long[] offsets, long[] sizes) => ReadSlice(TensorEntry(key), offsets, sizes);

    private unsafe HostTensor ReadSlice(DcpTensorEntry entry, long[] offsets, long[] sizes) =>
        ReadSlice(entry, offsets, sizes, (dtype, shape) => HostTensor.Allocate(dtype, shape), t => (nint)t.Data);

    /// <summary>The non-tensor value stored under <paramref name="key"/>: null, bool, long, double, string, list, <see cref="Pickle.PickleTuple"/>, <see cref="Pickle.PickleDict"/>, <see cref="RawPickleValue"/>, or a <see cref="HostTensor"/> (caller-owned).</summary>
    public object? ReadValue(string key)
    {
        if (Metadata.Find(key) is not DcpBytesEntry) throw new CheckpointFormatException($"{Directory}: key '{key}' is not a non-tensor value.");
        var location = Metadata.LocationOf(key, null);
        return WithItem(key, null, location, (archive, source, _) => TorchSaveCodec.ReadItem(archive, source, expect: null));
    }

    public DcpTensorEntry TensorEntry(string key) => Metadata.Find(key) switch
    {
        DcpTensorEntry t => t,
        null => throw new CheckpointFormatException($"{Directory}: no key '{key}'."),
        _ => throw new CheckpointFormatException($"{Directory}: key '{key}' is not a tensor."),
    };

    /// <summary>
    /// The box <c>[offsets, offsets + sizes)</c> of <paramref name="entry"/>, read into a tensor made by
    /// <paramref name="allocate"/> (dtype, shape; C order) once everything that can be checked before allocating has
    /// been; <paramref name="data"/> gives its first byte. Disposed if the read fails.
    /// </summary>
    public unsafe T ReadSlice<T>(DcpTensorEntry entry, long[] offsets, long[] sizes, Func<CheckpointDType, long[], T> allocate, Func<T, nint> data)
        where T : IDisposable
    {
        if (offsets.Length != entry.Size.Length || sizes.Length != entry.Size.Length)
        {
            throw new ArgumentException($"'{entry.Key}' has {entry.Size.Length} dimensions; the requested box has {offsets.Length}/{sizes.Length}.");
        }
        var dtype = CheckpointDTypes.Readable(entry.DType, $"{Directory}: key '{entry.Key}'");
        int elementSize = dtype.Size;
        for (int d = 0; d < sizes.Length; d++)
        {
            if (offsets[d] < 0 || sizes[d] < 0 || sizes[d] > entry.Size[d] - offsets[d])
            {
                throw new ArgumentException($"the requested box of '{entry.Key}' lies outside its shape ({string.Join(", ", entry.Size)}).");
            }
        }
        // One saved chunk that is exactly the requested box (how EmaGen and most single-process writers save): return it.
        foreach (var chunk in entry.Chunks)
        {
            if (chunk.Offsets.AsSpan().SequenceEqual(offsets) && chunk.Sizes.AsSpan().SequenceEqual(sizes) && (sizes.Length == 0 || chunk.Numel > 0))
            {
                var location = Metadata.LocationOf(entry.Key, chunk);
                var expect = new TensorExpectation(entry.DType, sizes);
                var whole = WithItem(entry.Key, chunk, location, (archive, source, _) =>
                {
                    var record = TorchSaveCodec.ReadTensorRecord(archive, source, expect);
                    var tensor = allocate(dtype, sizes);
                    try
                    {
                        TorchSaveCodec.ReadTensorInto(archive, record, source, (byte*)data(tensor));
                        return tensor;
                    }
                    catch
                    {
                        tensor.Dispose();
                        throw;
                    }
                });
                BytesRead += location.Length;
                return whole;
            }
        }

        // Never allocate more than the overlapping items could hold: a hostile shape must not cost memory.
        long wantedElements = 1;
        foreach (var s in sizes) wantedElements = checked(wantedElements * s);
        if (entry.Numel == 0)
        {
            // An empty tensor has no bytes to check, but its chunks must still span its shape, and its items still say what
            // it is: the metadata must agree with both.
            for (int d = 0; d < entry.Size.Length; d++)
            {
                long lo = entry.Chunks.Count == 0 ? -1 : entry.Chunks.Min(c => c.Offsets[d]);
                long hi = entry.Chunks.Count == 0 ? -1 : entry.Chunks.Max(c => c.Offsets[d] + c.Sizes[d]);
                if (lo != 0 || hi != entry.Size[d])
                {
                    throw new CheckpointFormatException($"{Directory}: the chunks of '{entry.Key}' span [{lo}, {hi}) of dimension {d}, its shape is ({string.Join(", ", entry.Size)}).");
                }
            }
            foreach (var chunk in entry.Chunks)
            {
                var expect = new TensorExpectation(entry.DType, chunk.Sizes);
                WithItem(entry.Key, chunk, Metadata.LocationOf(entry.Key, chunk), (archive, source, _) => TorchSaveCodec.ReadTensorRecord(archive, source, expect));
            }
        }
        long available = 0;
        foreach (var chunk in entry.Chunks)
        {
            if (Overlaps(chunk, offsets, sizes)) available += Metadata.LocationOf(entry.Key, chunk).Length;
        }
        if (wantedElements > 0 && checked(wantedElements * elementSize) > available)
        {
            throw new CheckpointFormatException($"{Directory}: the chunks of '{entry.Key}' hold {available} bytes, too few for {wantedElements} {entry.DType} elements.");
        }
        var result = allocate(dtype, sizes);
        byte* target = (byte*)data(result);
        try
        {
            // The metadata reader has checked that no two chunks overlap, so summing the overlaps' volumes measures coverage.
            long covered = 0;
            foreach (var chunk in entry.Chunks)
            {
                var lo = new long[sizes.Length];
                var hi = new long[sizes.Length];
                bool overlaps = true;
                for (int d = 0; d < sizes.Length; d++)
                {
                    lo[d] = Math.Max(offsets[d], chunk.Offsets[d]);
                    hi[d] = Math.Min(offsets[d] + sizes[d], chunk.Offsets[d] + chunk.Sizes[d]);
                    overlaps &= lo[d] < hi[d];
                }
                if (!overlaps && sizes.Length > 0) continue;
                var location = Metadata.LocationOf(entry.Key, chunk);
                // Only the rows of this chunk that the box needs are read: in C order they are one byte range, whatever the
                // box does in the other dimensions (those are cut from the rows in memory).
                long rowStart = sizes.Length > 0 ? lo[0] - chunk.Offsets[0] : 0;
                long rowCount = sizes.Length > 0 ? hi[0] - lo[0] : 0;
                var expect = new TensorExpectation(entry.DType, chunk.Sizes);
                var rowShape = (long[])chunk.Sizes.Clone();
                if (sizes.Length > 0) rowShape[0] = rowCount;
                var (rows, bytesRead) = WithItem(entry.Key, chunk, location, (archive, source, seal) =>
                {
                    // Allocated once the item's record has been checked against the metadata and its own storage.
                    var record = TorchSaveCodec.ReadTensorRecord(archive, source, expect);
                    var rows = HostTensor.Allocate(dtype, rowShape);
                    try
                    {
                        if (sizes.Length > 0) return (rows, TorchSaveCodec.ReadTensorRowsInto(archive, source, record, rowStart, rowCount, seal, rows.Data));
                        TorchSaveCodec.ReadTensorInto(archive, record, source, rows.Data);
                        return (rows, location.Length);
                    }
                    catch
                    {
                        rows.Dispose();
                        throw;
                    }
                });
                using var _rows = rows;
                BytesRead += bytesRead;
                var sourceStart = new long[sizes.Length];
                var targetStart = new long[sizes.Length];
                var extent = new long[sizes.Length];
                for (int d = 0; d < sizes.Length; d++)
                {
                    sourceStart[d] = lo[d] - chunk.Offsets[d] - (d == 0 ? rowStart : 0);
                    targetStart[d] = lo[d] - offsets[d];
                    extent[d] = hi[d] - lo[d];
                }
                TensorBoxes.Copy(rows.Data, rowShape, sourceStart, target, sizes, targetStart, extent, elementSize);
                long volume = 1;
                for (int d = 0; d < sizes.Length; d++) volume *= hi[d] - lo[d];
                covered += volume;
            }
            if (covered < wantedElements)
            {
                throw new CheckpointFormatException($"{Directory}: the chunks of '{entry.Key}' cover {covered} of the {wantedElements} requested elements.");
            }
            return result;
        }
        catch
        {
            result.Dispose();
            throw;
        }
    }

    private static bool Overlaps(DcpChunk chunk, long[] offsets, long[] sizes)
    {
        for (int d = 0; d < sizes.Length; d++)
        {
            if (Math.Max(offsets[d], chunk.Offsets[d]) >= Math.Min(offsets[d] + sizes[d], chunk.Offsets[d] + chunk.Sizes[d])) return false;
        }
        return true;
    }

    // Opens one item, checks its seal against the key, the chunk and this folder's save, then decodes it.
    private T WithItem<T>(string key, DcpChunk? chunk, DcpStorageLocation location, Func<TorchArchiveReader, string, ItemSeal?, T> read)
    {
        if (location.Transforms.Count > 0)
        {
            throw new CheckpointFormatException($"{Directory}: key '{key}' uses stream transforms ({string.Join(", ", location.Transforms)}), which EmaGen does not read.");
        }
        var name = location.RelativePath;
        if (name.Length == 0 || name.Contains('/') || name.Contains('\\') || name is "." or ".." || name.Contains('\0'))
        {
            throw new CheckpointFormatException($"{Directory}: key '{key}' names the file '{name}', which is not a plain file name in the folder.");
        }
        var path = Path.Combine(Directory, name);
        var source = $"{path} (key '{key}', bytes {location.Offset}+{location.Length})";
        try
        {
            using var stream = CheckpointFiles.OpenRead(path);
            var archive = TorchArchiveReader.Open(stream, location.Offset, location.Length, source);
            var seal = ItemSeal.Read(archive, source);
            _saves.Check(seal, source);
            seal?.CheckItem(key, chunk?.Offsets, source);
            return read(archive, source, seal);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new CheckpointFormatException($"{Directory}: key '{key}' lives in '{name}', which is missing.", e);
        }
        catch (EndOfStreamException e)
        {
            throw new CheckpointFormatException($"{source}: the file ends early.", e);
        }
        catch (CheckpointFormatException)
        {
            throw;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or OverflowException or ArgumentException
                                   or InvalidCastException or System.Runtime.InteropServices.ExternalException)
        {
            throw new CheckpointFormatException($"{source}: {e.Message}", e);
        }
    }
}

using System;
using System.Collections.Generic;
using System.IO;
using EmaGen.Dcp.Zip;
using TorchSharp;

namespace EmaGen.Dcp;

/// <summary>
/// Reads a DCP folder written by PyTorch (2.x or 1.13) or by EmaGen: any number of files per rank, items in any order,
/// chunked tensors (assembled, or only the part overlapping a requested box), non-tensor values decoded to plain
/// values or kept as raw bytes. Every failure is a <see cref="CheckpointFormatException"/> naming the file and key.
/// </summary>
public sealed class DcpReader
{
    private DcpReader(string directory, DcpMetadata metadata)
    {
        Directory = directory;
        Metadata = metadata;
    }

    public string Directory { get; }

    public DcpMetadata Metadata { get; }

    public IReadOnlyList<DcpEntry> Entries => Metadata.Entries;

    /// <summary>Tensor data bytes read so far (a slice of a saved chunk reads only its rows' bytes).</summary>
    public long BytesRead { get; private set; }

    /// <summary>Reads the <c>.metadata</c> of <paramref name="directory"/>.</summary>
    public static DcpReader Open(string directory)
    {
        var path = Path.Combine(directory, ".metadata");
        if (!System.IO.Directory.Exists(directory)) throw new DirectoryNotFoundException($"Checkpoint folder '{directory}' does not exist.");
        if (!File.Exists(path))
        {
            throw new CheckpointFormatException(File.Exists(path + ".tmp")
                ? $"{directory}: only .metadata.tmp exists; the save that wrote it did not finish."
                : $"{directory}: no .metadata file; not a DCP checkpoint folder.");
        }
        var info = new FileInfo(path);
        if (info.Length > 1L << 30) throw new CheckpointFormatException($"{path}: {info.Length} bytes is too large for checkpoint metadata.");
        var metadata = DcpMetadataReader.Read(File.ReadAllBytes(path), path);
        return new DcpReader(directory, metadata);
    }

    /// <summary>The whole tensor stored under <paramref name="key"/> (caller-owned), assembled from its chunks.</summary>
    public torch.Tensor ReadTensor(string key)
    {
        var entry = TensorEntry(key);
        return ReadSlice(entry, new long[entry.Size.Length], entry.Size);
    }

    /// <summary>
    /// The box <c>[offsets, offsets + sizes)</c> of tensor <paramref name="key"/>, read from the chunks that overlap it
    /// (others are not touched): how a rank loads its shard of any saved chunking.
    /// </summary>
    public torch.Tensor ReadSlice(string key, long[] offsets, long[] sizes) => ReadSlice(TensorEntry(key), offsets, sizes);

    /// <summary>The non-tensor value stored under <paramref name="key"/>: null, bool, long, double, string, list, <see cref="Pickle.PickleTuple"/>, <see cref="Pickle.PickleDict"/>, or <see cref="RawPickleValue"/>.</summary>
    public object? ReadValue(string key)
    {
        if (Metadata.Find(key) is not DcpBytesEntry) throw new CheckpointFormatException($"{Directory}: key '{key}' is not a non-tensor value.");
        var location = Metadata.LocationOf(key, null);
        return WithItem(key, location, (archive, source) => TorchSaveCodec.ReadItem(archive, source, expectTensor: false));
    }

    public DcpTensorEntry TensorEntry(string key) => Metadata.Find(key) switch
    {
        DcpTensorEntry t => t,
        null => throw new CheckpointFormatException($"{Directory}: no key '{key}'."),
        _ => throw new CheckpointFormatException($"{Directory}: key '{key}' is not a tensor."),
    };

    private torch.Tensor ReadSlice(DcpTensorEntry entry, long[] offsets, long[] sizes)
    {
        if (offsets.Length != entry.Size.Length || sizes.Length != entry.Size.Length)
        {
            throw new ArgumentException($"'{entry.Key}' has {entry.Size.Length} dimensions; the requested box has {offsets.Length}/{sizes.Length}.");
        }
        if (!TorchDTypes.TryGet(entry.DType, out var dtype, out _))
        {
            throw new CheckpointFormatException($"{Directory}: key '{entry.Key}' has dtype {entry.DType}, which TorchSharp does not support.");
        }
        for (int d = 0; d < sizes.Length; d++)
        {
            if (offsets[d] < 0 || sizes[d] < 0 || offsets[d] + sizes[d] > entry.Size[d])
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
                var whole = WithItem(entry.Key, location, (archive, source) => (torch.Tensor)TorchSaveCodec.ReadItem(archive, source, expectTensor: true)!);
                BytesRead += location.Length;
                if (!whole.shape.AsSpan().SequenceEqual(sizes) || whole.dtype != dtype)
                {
                    whole.Dispose();
                    throw new CheckpointFormatException($"{Path.Combine(Directory, location.RelativePath)}: chunk of '{entry.Key}' is {whole.dtype} ({string.Join(", ", whole.shape)}), metadata says {entry.DType} ({string.Join(", ", sizes)}).");
                }
                return whole;
            }
        }

        // Never allocate more than the overlapping items could hold: a hostile shape must not cost memory.
        long wantedElements = 1;
        foreach (var s in sizes) wantedElements = checked(wantedElements * s);
        long available = 0;
        foreach (var chunk in entry.Chunks)
        {
            if (Overlaps(chunk, offsets, sizes)) available += Metadata.LocationOf(entry.Key, chunk).Length;
        }
        TorchDTypes.TryGet(entry.DType, out _, out int elementSize);
        if (wantedElements > 0 && wantedElements * elementSize > available)
        {
            throw new CheckpointFormatException($"{Directory}: the chunks of '{entry.Key}' hold {available} bytes, too few for {wantedElements} {entry.DType} elements.");
        }
        var result = torch.zeros(sizes, dtype);
        try
        {
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
                var (data, bytesRead) = WithItem(entry.Key, location, (archive, source) => sizes.Length == 0
                    ? ((torch.Tensor)TorchSaveCodec.ReadItem(archive, source, expectTensor: true)!, location.Length)
                    : TorchSaveCodec.ReadTensorRows(archive, source, rowStart, rowCount));
                using var _data = data;
                BytesRead += bytesRead;
                var expectedShape = (long[])chunk.Sizes.Clone();
                if (sizes.Length > 0) expectedShape[0] = rowCount;
                if (!data.shape.AsSpan().SequenceEqual(expectedShape))
                {
                    throw new CheckpointFormatException($"{Path.Combine(Directory, location.RelativePath)}: chunk of '{entry.Key}' has shape ({string.Join(", ", data.shape)}), metadata says ({string.Join(", ", chunk.Sizes)}).");
                }
                if (data.dtype != dtype) throw new CheckpointFormatException($"{Directory}: chunk of '{entry.Key}' is {data.dtype}, the entry says {entry.DType}.");
                var source = data;
                var target = result;
                var owned = new List<torch.Tensor>();
                try
                {
                    for (int d = 0; d < sizes.Length; d++)
                    {
                        long sourceStart = lo[d] - chunk.Offsets[d] - (d == 0 ? rowStart : 0);
                        source = source.narrow(d, sourceStart, hi[d] - lo[d]);
                        target = target.narrow(d, lo[d] - offsets[d], hi[d] - lo[d]);
                        owned.Add(source);
                        owned.Add(target);
                    }
                    InPlace.Release(target.copy_(source), target);
                }
                finally
                {
                    foreach (var t in owned) t.Dispose();
                }
                long volume = 1;
                for (int d = 0; d < sizes.Length; d++) volume *= hi[d] - lo[d];
                covered += volume;
            }
            long wanted = 1;
            foreach (var s in sizes) wanted *= s;
            if (covered < wanted)
            {
                throw new CheckpointFormatException($"{Directory}: the chunks of '{entry.Key}' cover {covered} of the {wanted} requested elements.");
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

    private T WithItem<T>(string key, DcpStorageLocation location, Func<TorchArchiveReader, string, T> read)
    {
        if (location.Transforms.Count > 0)
        {
            throw new CheckpointFormatException($"{Directory}: key '{key}' uses stream transforms ({string.Join(", ", location.Transforms)}), which EmaGen does not read.");
        }
        var name = location.RelativePath;
        if (name.Length == 0 || name.Contains('/') || name.Contains('\\') || name is "." or "..")
        {
            throw new CheckpointFormatException($"{Directory}: key '{key}' names the file '{name}', which is not a plain file name in the folder.");
        }
        var path = Path.Combine(Directory, name);
        var source = $"{path} (key '{key}', bytes {location.Offset}+{location.Length})";
        try
        {
            using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
            var archive = TorchArchiveReader.Open(stream, location.Offset, location.Length, source);
            return read(archive, source);
        }
        catch (FileNotFoundException)
        {
            throw new CheckpointFormatException($"{Directory}: key '{key}' lives in '{name}', which is missing.");
        }
        catch (EndOfStreamException e)
        {
            throw new CheckpointFormatException($"{source}: the file ends early.", e);
        }
        catch (Exception e) when (e is OverflowException or ArgumentException or InvalidCastException
                                   or System.Runtime.InteropServices.ExternalException)
        {
            throw new CheckpointFormatException($"{source}: {e.Message}", e);
        }
    }
}

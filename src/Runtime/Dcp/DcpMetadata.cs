using System.Collections.Generic;

namespace EmaGen.Dcp;

/// <summary>One rectangular chunk of a (possibly sharded) tensor: where it starts in every dimension and its extent.</summary>
public sealed record DcpChunk(long[] Offsets, long[] Sizes)
{
    public long Numel
    {
        get
        {
            long n = 1;
            foreach (var s in Sizes) n = checked(n * s);
            return n;
        }
    }

    internal string OffsetsKey => string.Join(",", Offsets);
}

/// <summary>A key of the checkpoint: a tensor with chunks, or a non-tensor (BYTE_IO) value.</summary>
public abstract record DcpEntry(string Key);

/// <summary>A tensor entry: global dtype (PyTorch name) and shape, and the chunks that tile it.</summary>
public sealed record DcpTensorEntry(string Key, string DType, long[] Size, IReadOnlyList<DcpChunk> Chunks) : DcpEntry(Key)
{
    public long Numel
    {
        get
        {
            long n = 1;
            foreach (var s in Size) n = checked(n * s);
            return n;
        }
    }
}

/// <summary>A non-tensor value, stored as its own pickled torch.save item.</summary>
public sealed record DcpBytesEntry(string Key) : DcpEntry(Key);

/// <summary>Where one item's bytes are: a file of the folder and a byte range.</summary>
public sealed record DcpStorageLocation(string RelativePath, long Offset, long Length, IReadOnlyList<string> Transforms);

/// <summary>Which PyTorch line's class names a <c>.metadata</c> file uses.</summary>
public enum DcpNaming
{
    /// <summary><c>torch.distributed.checkpoint.*</c> with the 2.3+ <c>TensorProperties</c> (default for writing).</summary>
    PyTorch23,
    /// <summary><c>torch.distributed.checkpoint.*</c> with the <c>_shard.sharded_tensor</c> <c>TensorProperties</c>, no storage_meta: loadable by 2.0-2.2 too.</summary>
    PyTorch20,
    /// <summary><c>torch.distributed._shard.checkpoint.*</c>: PyTorch 1.13 (read only).</summary>
    PyTorch113,
}

/// <summary>The decoded <c>.metadata</c> of a DCP folder.</summary>
public sealed class DcpMetadata
{
    public List<DcpEntry> Entries { get; } = new();

    /// <summary>Item locations keyed by (fqn, chunk offsets); BYTE_IO items have null offsets.</summary>
    public Dictionary<(string Key, string? Offsets), DcpStorageLocation> Storage { get; } = new();

    /// <summary>Flattened key → original path elements (strings or ints), or null when the writer kept none.</summary>
    public Dictionary<string, object?[]>? PlannerData { get; set; }

    public DcpNaming Naming { get; set; } = DcpNaming.PyTorch23;

    public string? CheckpointId { get; set; }

    public string? SaveId { get; set; }

    public string? Version { get; set; }

    public DcpEntry? Find(string key)
    {
        foreach (var e in Entries) if (e.Key == key) return e;
        return null;
    }

    public DcpStorageLocation LocationOf(string key, DcpChunk? chunk) =>
        Storage.TryGetValue((key, chunk?.OffsetsKey), out var location)
            ? location
            : throw new CheckpointFormatException($"key '{key}'{(chunk is null ? "" : $" chunk at ({chunk.OffsetsKey})")} has no entry in storage_data.");
}

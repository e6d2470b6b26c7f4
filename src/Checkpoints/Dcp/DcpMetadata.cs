using System;
using System.Collections.Generic;
using System.Linq;

namespace EmaGen.Dcp;

/// <summary>One rectangular chunk of a (possibly sharded) tensor: where it starts in every dimension and its extent.</summary>
public sealed class DcpChunk : IEquatable<DcpChunk>
{
    internal DcpChunk(long[] offsets, long[] sizes) => (Offsets, Sizes) = (offsets, sizes);

    public long[] Offsets { get; }

    public long[] Sizes { get; }

    public long Numel => Shapes.Numel(Sizes);

    internal string OffsetsKey => string.Join(",", Offsets);

    /// <summary>This chunk moved to <paramref name="offsets"/> (tests and the fuzzer damage metadata this way).</summary>
    internal DcpChunk WithOffsets(long[] offsets) => new(offsets, Sizes);

    /// <summary>Equal when both chunks have the same offsets and sizes.</summary>
    public bool Equals(DcpChunk? other) => other is not null && Shapes.Equal(Offsets, other.Offsets) && Shapes.Equal(Sizes, other.Sizes);

    public override bool Equals(object? obj) => Equals(obj as DcpChunk);

    public override int GetHashCode() => HashCode.Combine(Shapes.Hash(Offsets), Shapes.Hash(Sizes));

    public override string ToString() => $"{Shapes.Text(Sizes)} at {Shapes.Text(Offsets)}";
}

/// <summary>
/// A key of the checkpoint: a <see cref="DcpTensorEntry"/> (a tensor with chunks) or a <see cref="DcpBytesEntry"/> (a
/// non-tensor value). Two entries are equal when they are of one kind with equal contents (arrays element by element).
/// </summary>
public abstract class DcpEntry : IEquatable<DcpEntry>
{
    private protected DcpEntry(string key) => Key = key;

    public string Key { get; }

    public bool Equals(DcpEntry? other) => other is not null && other.GetType() == GetType() && Key == other.Key && SameContents(other);

    public sealed override bool Equals(object? obj) => Equals(obj as DcpEntry);

    public sealed override int GetHashCode() => HashCode.Combine(GetType(), Key, ContentsHash());

    /// <summary>This entry under another key (tests and the fuzzer damage metadata this way).</summary>
    internal abstract DcpEntry WithKey(string key);

    private protected abstract bool SameContents(DcpEntry other);

    private protected abstract int ContentsHash();
}

/// <summary>A tensor entry: global dtype (PyTorch name) and shape, and the chunks that tile it.</summary>
public sealed class DcpTensorEntry : DcpEntry
{
    internal DcpTensorEntry(string key, string dType, long[] size, IReadOnlyList<DcpChunk> chunks) : base(key) =>
        (DType, Size, Chunks) = (dType, size, chunks);

    public string DType { get; }

    public long[] Size { get; }

    public IReadOnlyList<DcpChunk> Chunks { get; }

    public long Numel => Shapes.Numel(Size);

    public override string ToString() => $"{Key}: {DType} {Shapes.Text(Size)} in {Chunks.Count} chunk(s)";

    /// <summary>A copy with the given fields replaced (tests and the fuzzer damage metadata this way).</summary>
    internal DcpTensorEntry With(string? key = null, string? dType = null, long[]? size = null, IReadOnlyList<DcpChunk>? chunks = null) =>
        new(key ?? Key, dType ?? DType, size ?? Size, chunks ?? Chunks);

    internal override DcpEntry WithKey(string key) => With(key: key);

    private protected override bool SameContents(DcpEntry other) =>
        other is DcpTensorEntry t && DType == t.DType && Shapes.Equal(Size, t.Size) && Chunks.SequenceEqual(t.Chunks);

    private protected override int ContentsHash() => HashCode.Combine(DType, Shapes.Hash(Size), Chunks.Count);
}

/// <summary>A non-tensor value, stored as its own pickled torch.save item.</summary>
public sealed class DcpBytesEntry : DcpEntry
{
    internal DcpBytesEntry(string key) : base(key)
    {
    }

    public override string ToString() => $"{Key}: value";

    internal override DcpEntry WithKey(string key) => new DcpBytesEntry(key);

    private protected override bool SameContents(DcpEntry other) => true;

    private protected override int ContentsHash() => 0;
}

/// <summary>Where one item's bytes are: a file of the folder and a byte range.</summary>
internal sealed record DcpStorageLocation(string RelativePath, long Offset, long Length, IReadOnlyList<string> Transforms);

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

/// <summary>The decoded <c>.metadata</c> of a DCP folder: its keys, and which PyTorch line's class names it uses.</summary>
public sealed class DcpMetadata
{
    internal DcpMetadata()
    {
    }

    /// <summary>Every key, in the order the file lists them.</summary>
    public List<DcpEntry> Entries { get; } = new();

    /// <summary>Item locations keyed by (fqn, chunk offsets); BYTE_IO items have null offsets.</summary>
    internal Dictionary<(string Key, string? Offsets), DcpStorageLocation> Storage { get; } = new();

    /// <summary>Flattened key → original path elements (strings or ints), or null when the writer kept none.</summary>
    internal Dictionary<string, object?[]>? PlannerData { get; set; }

    public DcpNaming Naming { get; internal set; } = DcpNaming.PyTorch23;

    internal string? CheckpointId { get; set; }

    internal string? SaveId { get; set; }

    internal string? Version { get; set; }

    /// <summary>The entry named <paramref name="key"/>, or null.</summary>
    public DcpEntry? Find(string key)
    {
        foreach (var e in Entries) if (e.Key == key) return e;
        return null;
    }

    internal DcpStorageLocation LocationOf(string key, DcpChunk? chunk) =>
        Storage.TryGetValue((key, chunk?.OffsetsKey), out var location)
            ? location
            : throw new CheckpointFormatException($"key '{key}'{(chunk is null ? "" : $" chunk at ({chunk.OffsetsKey})")} has no entry in storage_data.");
}

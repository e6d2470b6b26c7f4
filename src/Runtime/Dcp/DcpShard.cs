using System;
using TorchSharp;

namespace EmaGen.Dcp;

/// <summary>
/// One rank's contribution to a sharded tensor: its local block, where the block sits in the global tensor. Two shards
/// are equal when they have the same key, the same <see cref="Local"/> tensor object, and equal sizes and offsets.
/// </summary>
public sealed class DcpShard : IEquatable<DcpShard>
{
    /// <param name="key">Flattened key.</param>
    /// <param name="local">The rank's block (CPU or any device; may be empty).</param>
    /// <param name="globalSize">Shape of the whole tensor.</param>
    /// <param name="offsets">Where <paramref name="local"/> starts in every dimension.</param>
    /// <param name="replicated">Every rank holds the whole tensor; only rank 0 writes it, so it is stored once.</param>
    public DcpShard(string key, torch.Tensor local, long[] globalSize, long[] offsets, bool replicated = false) =>
        (Key, Local, GlobalSize, Offsets, Replicated) = (key, local, globalSize, offsets, replicated);

    public string Key { get; }

    public torch.Tensor Local { get; }

    public long[] GlobalSize { get; }

    public long[] Offsets { get; }

    public bool Replicated { get; }

    public bool Equals(DcpShard? other) =>
        other is not null && Key == other.Key && ReferenceEquals(Local, other.Local) && Shapes.Equal(GlobalSize, other.GlobalSize)
        && Shapes.Equal(Offsets, other.Offsets) && Replicated == other.Replicated;

    public override bool Equals(object? obj) => Equals(obj as DcpShard);

    public override int GetHashCode() => HashCode.Combine(Key, Local, Shapes.Hash(GlobalSize), Shapes.Hash(Offsets), Replicated);

    public override string ToString() => $"{Key}: block at {Shapes.Text(Offsets)} of {Shapes.Text(GlobalSize)}{(Replicated ? ", replicated" : "")}";
}

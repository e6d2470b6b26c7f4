using System;

namespace EmaGen;

/// <summary>
/// Which part of a tensor each rank owns, with <c>torch.chunk</c> / FSDP2 <c>Shard(dim)</c> semantics: with
/// <c>c = ceil(D / N)</c>, rank r owns rows <c>[c·r, min(D, c·(r+1)))</c>; a rank past the end owns an empty chunk whose
/// offset is D (D = 5, N = 4 gives 2, 2, 1, 0 rows). Padding never appears: sizes are the real rows.
/// </summary>
public static class ShardLayout
{
    /// <summary>Replicated: every rank holds the whole tensor.</summary>
    public const int Replicated = -1;

    /// <summary>Offset and length of rank <paramref name="rank"/>'s rows out of <paramref name="length"/>.</summary>
    public static (long Offset, long Size) Chunk(long length, int worldSize, int rank)
    {
        if (length < 0) throw new ArgumentOutOfRangeException(nameof(length), length, "The length must not be negative.");
        if (worldSize < 1) throw new ArgumentOutOfRangeException(nameof(worldSize), worldSize, "The world size must be at least 1.");
        if (rank < 0 || rank >= worldSize) throw new ArgumentOutOfRangeException(nameof(rank), rank, $"The rank must lie in [0, {worldSize}).");
        long c = (length + worldSize - 1) / worldSize;
        long start = c * rank;
        if (start >= length) return (length, 0);
        return (start, Math.Min(length, start + c) - start);
    }

    /// <summary>The box (offsets, sizes) of rank <paramref name="rank"/> in a tensor of <paramref name="shape"/> sharded along <paramref name="shardDim"/>.</summary>
    public static (long[] Offsets, long[] Sizes) Box(long[] shape, int shardDim, int worldSize, int rank)
    {
        var offsets = new long[shape.Length];
        var sizes = (long[])shape.Clone();
        if (shardDim == Replicated || shape.Length == 0) return (offsets, sizes);
        if (shardDim < 0 || shardDim >= shape.Length)
        {
            throw new ArgumentOutOfRangeException(nameof(shardDim), shardDim, $"Shard dimension {shardDim} does not exist in a {shape.Length}-dimensional tensor.");
        }
        (offsets[shardDim], sizes[shardDim]) = Chunk(shape[shardDim], worldSize, rank);
        return (offsets, sizes);
    }
}

using System;
using System.Collections.Generic;

namespace EmaGen.Dcp;

/// <summary>
/// Finds two chunks of a tensor whose boxes share an element. Summing chunk volumes cannot see an overlap that hides a
/// hole of the same size, so a tensor's chunks are checked pairwise, in a sweep over the first dimension.
/// </summary>
internal static class ChunkOverlap
{
    // A tiling that needs more comparisons than this is not something a trainer writes; refuse rather than spin.
    private const long MaxComparisons = 50_000_000;

    public static (DcpChunk, DcpChunk)? Find(IReadOnlyList<DcpChunk> chunks)
    {
        var boxes = new List<DcpChunk>(chunks.Count);
        foreach (var c in chunks) if (c.Numel > 0) boxes.Add(c);
        if (boxes.Count < 2) return null;
        if (boxes[0].Offsets.Length == 0) return (boxes[0], boxes[1]); // two non-empty 0-dim chunks are the same element
        boxes.Sort((x, y) => x.Offsets[0].CompareTo(y.Offsets[0]));
        long comparisons = 0;
        for (int i = 0; i < boxes.Count; i++)
        {
            long end = boxes[i].Offsets[0] + boxes[i].Sizes[0];
            for (int j = i + 1; j < boxes.Count && boxes[j].Offsets[0] < end; j++)
            {
                if (++comparisons > MaxComparisons)
                {
                    throw new CheckpointFormatException($"{boxes.Count} chunks of one tensor overlap too often in their first dimension to be checked.");
                }
                if (Intersect(boxes[i], boxes[j])) return (boxes[i], boxes[j]);
            }
        }
        return null;
    }

    private static bool Intersect(DcpChunk a, DcpChunk b)
    {
        for (int d = 0; d < a.Offsets.Length; d++)
        {
            if (Math.Max(a.Offsets[d], b.Offsets[d]) >= Math.Min(a.Offsets[d] + a.Sizes[d], b.Offsets[d] + b.Sizes[d])) return false;
        }
        return true;
    }
}

using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Linq;

namespace EmaGen.Benchmarks;

/// <summary>How the benchmarks time things: warm-up, round-robin rounds from a cold cache, medians.</summary>
internal static class Timing
{
    /// <summary>
    /// Milliseconds per variant and round. Every variant is first warmed up long enough for tiered compilation to
    /// finish (30 calls, then a background re-JIT), so the timed rounds measure optimised code on every side. Rounds go
    /// round-robin, so that every variant sees the same machine conditions, and each timed step starts from the same
    /// cache state: a 64 MiB sweep evicts whatever the previous variant left in the 32 MiB L3, so no variant profits
    /// from its predecessor.
    /// <para>
    /// Each round runs the variants in a fresh order (a seeded shuffle, the same for every run), so that every variant
    /// follows every other about equally often. What ran before a step moves its time: LibTorch's OpenMP workers (GNU
    /// libgomp, shipped with LibTorch) busy-wait for milliseconds after a parallel region, holding a core, and sleep
    /// after that, so a step on that team right after another parallel step finds them spinning and one after a
    /// one-thread variant or a pass on other threads pays their wake-up. The cyclic rotation used before gave every
    /// variant the same predecessor in every round (a rotation moves the start, not the neighbours), which put that
    /// cost into some variants' medians and not others': on 5M/1000 fp32 one manager's same update ran 0.66 ms after a
    /// two-thread step and 0.74 ms after a one-thread one. What the update costs where a trainer calls it, right after
    /// a LibTorch op, the update benchmark reports separately (<c>emagen_after_libtorch_op</c>, using
    /// <paramref name="before"/>).
    /// </para>
    /// </summary>
    /// <param name="before">Per variant name, an untimed action run right before each timed step (after the sweep).</param>
    public static Dictionary<string, List<double>> RoundRobin(IReadOnlyList<(string Name, Action Step)> variants, int rounds,
        IReadOnlyDictionary<string, Action>? before = null)
    {
        foreach (var (_, step) in variants)
        {
            var warm = Stopwatch.StartNew();
            for (int w = 0; w < 40 || warm.ElapsedMilliseconds < 400; w++) step();
        }
        var samples = variants.ToDictionary(v => v.Name, _ => new List<double>());
        var sweep = new float[16 << 20];
        var order = Enumerable.Range(0, variants.Count).ToArray();
        var shuffle = new Random(20261206);
        for (int r = 0; r < rounds; r++)
        {
            shuffle.Shuffle(order);
            foreach (int v in order)
            {
                var (name, step) = variants[v];
                for (int i = 0; i < sweep.Length; i += 16) sweep[i] += 1;
                if (before is not null && before.TryGetValue(name, out var setup)) setup();
                var clock = Stopwatch.StartNew();
                step();
                samples[name].Add(clock.Elapsed.TotalMilliseconds);
            }
        }
        return samples;
    }

    public static double Median(List<double> values)
    {
        var sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }
}

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
    /// Each round starts one variant later than the one before, so every variant follows every other equally often.
    /// A fixed order was unfair: LibTorch's OpenMP workers (GNU libgomp, shipped with LibTorch) busy-wait for 5-10 ms
    /// after a parallel op, holding a core, and the sweep does not outlast that; on this project's 2-core VM the
    /// variant placed right after LibTorch's flat <c>lerp_</c> ran 3.0-3.1 ms where the same manager two places later ran
    /// 2.7-2.8 ms (5M/1000 fp32). With rotation that cost falls in a minority of a variant's rounds, outside its median.
    /// What the cost is for a trainer, whose update does follow a LibTorch op, the update benchmark reports separately
    /// (<c>emagen_after_libtorch_op</c>, using <paramref name="before"/>).
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
        for (int r = 0; r < rounds; r++)
        {
            for (int v = 0; v < variants.Count; v++)
            {
                var (name, step) = variants[(r + v) % variants.Count];
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

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
    /// cache state: a 64 MiB sweep evicts whatever the previous variant left in the 32 MiB L3 (and lets LibTorch's
    /// OpenMP threads stop spinning), so no variant profits from its predecessor.
    /// </summary>
    public static Dictionary<string, List<double>> RoundRobin(IReadOnlyList<(string Name, Action Step)> variants, int rounds)
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
            foreach (var (name, step) in variants)
            {
                for (int i = 0; i < sweep.Length; i += 16) sweep[i] += 1;
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

using System;
using System.Globalization;
using System.IO;
using System.Linq;

namespace EmaGen.Cli;

/// <summary>
/// <c>emagen posthoc SNAPSHOTS</c> lists the post-hoc snapshots (step, profile, γ, σ_rel); with <c>--sigma-rel S --step T
/// --out DIR</c> it synthesises the EMA of width S at step T from them (EDM2's post-hoc EMA) and writes it as an EMA
/// checkpoint, printing each snapshot's coefficient; <c>--sigma-rel 0.05,0.075,0.1</c> makes several in one pass.
/// </summary>
internal static class PostHocCommand
{
    public static int Run(string snapshots, string? sigmaRels, long? step, string? output, string dtype, string prefix, TextWriter stdout)
    {
        if (sigmaRels is null && step is null && output is null)
        {
            var list = PostHocSnapshot.List(snapshots);
            stdout.WriteLine($"{snapshots}: {list.Count} snapshot profile(s)");
            stdout.WriteLine("        step  profile               gamma     sigma_rel");
            foreach (var s in list) stdout.WriteLine($"  {s.Step,10}  {s.Profile,-20}  {s.Gamma,8:F4}  {s.SigmaRel:F4}");
            return 0;
        }
        if (sigmaRels is null || step is null || output is null)
        {
            throw new ArgumentException("Synthesis needs all of --sigma-rel, --step and --out (without them, the snapshots are listed).");
        }
        var widths = sigmaRels.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(w => double.TryParse(w, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) ? v : throw new ArgumentException($"--sigma-rel: '{w}' is not a number."))
            .ToArray();
        // One width writes OUT itself; several write OUT/sigma-<width> each, all from one pass over the snapshots.
        var targets = widths.Length == 1
            ? [(widths[0], output)]
            : widths.Select(w => (w, Path.Combine(output, "sigma-" + w.ToString("R", CultureInfo.InvariantCulture)))).ToArray();
        var name = dtype.ToLowerInvariant();
        if (name is not ("float32" or "bfloat16" or "float16") || !CheckpointDTypes.TryGetByTorchName(name, out var outputDType))
        {
            throw new ArgumentException($"--dtype '{dtype}' is not one of float32, bfloat16, float16.");
        }
        var results = PostHocSynthesis.Run(snapshots, targets, step.Value, prefix, outputDType);
        for (int t = 0; t < results.Count; t++)
        {
            var result = results[t];
            stdout.WriteLine(result.ToString());
            stdout.WriteLine("        step  profile               gamma     coefficient");
            foreach (var (snapshot, coefficient) in result.Terms)
            {
                stdout.WriteLine($"  {snapshot.Step,10}  {snapshot.Profile,-20}  {snapshot.Gamma,8:F4}  {coefficient.ToString("G8", CultureInfo.InvariantCulture)}");
            }
            stdout.WriteLine($"wrote {targets[t].Item2} (keys {prefix}*, schedule PowerFunction(gamma={result.Gamma.ToString("R", CultureInfo.InvariantCulture)}), step {result.AtStep})");
        }
        return 0;
    }
}

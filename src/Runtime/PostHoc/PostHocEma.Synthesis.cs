using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using EmaGen.Dcp;
using TorchSharp;

namespace EmaGen;

public static partial class PostHocEma
{
    /// <summary>
    /// Reconstructs the power-function EMA of width <paramref name="sigmaRel"/> at step <paramref name="atStep"/> from
    /// the snapshots in <paramref name="snapshotsDir"/> taken at or before it (later ones are ignored), and writes it to
    /// <paramref name="outputDir"/> as an EMA checkpoint that <see cref="EmaManagerBase{TModel}.Load"/> reads (schedule
    /// <c>PowerFunction(σ_rel)</c>, step <paramref name="atStep"/>). Sums are taken in fp32 over one snapshot tensor at a
    /// time: memory is the output plus one tensor. <paramref name="atStep"/> is best a snapshot step, as in EDM2.
    /// </summary>
    /// <exception cref="ArgumentException">No usable snapshot, degenerate profiles, or snapshots that disagree on names or shapes.</exception>
    /// <exception cref="CheckpointFormatException">A snapshot folder is unreadable.</exception>
    public static PostHocResult Synthesize(string snapshotsDir, double sigmaRel, long atStep, string outputDir,
        string prefix = EmaCheckpoint.DefaultPrefix, torch.ScalarType dtype = torch.ScalarType.Float32) =>
        Synthesize(snapshotsDir, [(sigmaRel, outputDir)], atStep, prefix, dtype)[0];

    /// <summary>
    /// Several widths in one pass over the snapshots (as EDM2's reconstruction does): each snapshot tensor is read once
    /// and added into every target's fp32 sum, so reading costs one pass whatever the number of targets; memory is the
    /// targets' outputs plus one tensor. Every target is written as in the single-width form.
    /// </summary>
    public static IReadOnlyList<PostHocResult> Synthesize(string snapshotsDir, IReadOnlyList<(double SigmaRel, string OutputDir)> targets, long atStep,
        string prefix = EmaCheckpoint.DefaultPrefix, torch.ScalarType dtype = torch.ScalarType.Float32)
    {
        ArgumentNullException.ThrowIfNull(targets);
        if (targets.Count == 0) throw new ArgumentException("Name at least one width to synthesise.", nameof(targets));
        foreach (var (_, dir) in targets) ArgumentNullException.ThrowIfNull(dir, nameof(targets));
        if (atStep < 1) throw new ArgumentOutOfRangeException(nameof(atStep), atStep, "The target step must be at least 1.");
        if (!DTypes.IsFloatingPoint(dtype)) throw new ArgumentException($"The output is floating point; {dtype} is not.", nameof(dtype));
        var gammas = targets.Select(t => PowerFunctionSchedule.GammaFromSigmaRel(t.SigmaRel)).ToArray();
        var all = PostHocSnapshot.List(snapshotsDir);
        var used = all.Where(s => s.Step <= atStep).ToList();
        if (used.Count == 0)
        {
            throw new ArgumentException($"{snapshotsDir}: no snapshot at or before step {atStep} (snapshots: {(all.Count == 0 ? "none" : string.Join(", ", all.Select(s => s.Step).Distinct()))}).");
        }
        var basis = used.Select(s => (s.Step, s.Gamma)).ToList();
        var coefficients = gammas.Select(g => PostHocSolver.Solve(basis, atStep, g)).ToArray();

        var sums = targets.Select(_ => new Dictionary<string, torch.Tensor>(StringComparer.Ordinal)).ToArray();
        try
        {
            Accumulate(used, coefficients, sums);
            for (int t = 0; t < targets.Count; t++)
            {
                var schedule = new PowerFunctionSchedule(gammas[t]);
                var state = new List<KeyValuePair<string, object?>>();
                foreach (var (name, sum) in sums[t])
                {
                    state.Add(new(prefix + name, dtype == torch.ScalarType.Float32 ? sum : new DeferredTensor(() => sum.to_type(dtype, copy: true), dtype, sum.shape)));
                }
                // The current decay is the one the target profile applies at atStep, as a tracked profile would have stored;
                // a power-function profile has no configured constant decay.
                var stored = new EmaCheckpoint.StoredState(atStep, double.NaN, schedule.DecayAt(atStep), schedule.Describe());
                state.AddRange(EmaCheckpoint.ProfileState(prefix, stored));
                var x = coefficients[t];
                state.Add(new(CheckpointKeys.Of(prefix, CheckpointKeys.PostHoc),
                    string.Join("; ", used.Select((s, i) => $"{Path.GetFileName(s.Folder)}/{s.Profile} x {EmaSchedule.Number(x[i])}"))));
                DcpWriter.Save(targets[t].OutputDir, state);
            }
        }
        finally
        {
            foreach (var target in sums)
            {
                foreach (var sum in target.Values) sum.Dispose();
            }
        }
        return targets.Select((target, t) => new PostHocResult(target.SigmaRel, gammas[t], atStep,
            used.Select((s, i) => (s, coefficients[t][i])).ToList(), all.Count - used.Count)).ToList();
    }

    // Σ x_i θ_i per target and tensor name, in fp32, reading each snapshot tensor once.
    private static void Accumulate(List<PostHocSnapshot> used, double[][] coefficients, Dictionary<string, torch.Tensor>[] sums)
    {
        using var _ = torch.no_grad();
        HashSet<string>? names = null;
        for (int i = 0; i < used.Count; i++)
        {
            var snapshot = used[i];
            var reader = DcpReader.Open(snapshot.Folder);
            var keyPrefix = snapshot.Profile + ".";
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var entry in reader.Entries.OfType<DcpTensorEntry>())
            {
                if (!entry.Key.StartsWith(keyPrefix, StringComparison.Ordinal)) continue;
                var name = entry.Key[keyPrefix.Length..];
                seen.Add(name);
                using var value = reader.ReadTensor(entry.Key);
                for (int t = 0; t < sums.Length; t++)
                {
                    if (!sums[t].TryGetValue(name, out var sum))
                    {
                        if (names is not null) throw new ArgumentException($"{snapshot.Folder}: '{entry.Key}' is in no earlier snapshot; all snapshots must hold the same parameters.");
                        sum = sums[t][name] = torch.zeros(value.shape, torch.ScalarType.Float32).DetachFromDisposeScope();
                    }
                    else if (!sum.shape.AsSpan().SequenceEqual(value.shape))
                    {
                        throw new ArgumentException($"{snapshot.Folder}: '{entry.Key}' has shape [{string.Join(", ", value.shape)}], earlier snapshots [{string.Join(", ", sum.shape)}].");
                    }
                    InPlace.Release(sum.add_(value, alpha: coefficients[t][i]), sum);
                }
            }
            if (names is null) names = seen;
            else if (!names.SetEquals(seen))
            {
                throw new ArgumentException($"{snapshot.Folder}: profile '{snapshot.Profile}' lacks {string.Join(", ", names.Except(seen).Take(5))}; all snapshots must hold the same parameters.");
            }
        }
    }
}

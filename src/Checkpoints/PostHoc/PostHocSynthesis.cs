using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using EmaGen.Dcp;

namespace EmaGen;

/// <summary>
/// EDM2's post-hoc EMA synthesis over snapshot folders, without TorchSharp: the runtime's <c>PostHocEma.Synthesize</c>
/// and the tool's <c>posthoc</c> both run it. Streamed: each output tensor is summed (fp32) from the snapshots' tensors
/// of that name when it is written, so at most the sum and one snapshot tensor are resident, whatever the model size.
/// </summary>
internal static class PostHocSynthesis
{
    /// <summary>
    /// Several widths from the snapshots in <paramref name="snapshotsDir"/> taken at or before <paramref name="atStep"/>
    /// (later ones are ignored), each written to its folder as an EMA checkpoint (schedule <c>PowerFunction(σ_rel)</c>,
    /// step <paramref name="atStep"/>) in <paramref name="dtype"/>.
    /// </summary>
    /// <exception cref="ArgumentException">No usable snapshot, degenerate profiles, or snapshots that disagree on names or shapes.</exception>
    /// <exception cref="CheckpointFormatException">A snapshot folder is unreadable.</exception>
    public static IReadOnlyList<PostHocResult> Run(string snapshotsDir, IReadOnlyList<(double SigmaRel, string OutputDir)> targets, long atStep,
        string prefix, CheckpointDType dtype)
    {
        ArgumentNullException.ThrowIfNull(targets);
        if (targets.Count == 0) throw new ArgumentException("Name at least one width to synthesise.", nameof(targets));
        foreach (var (_, dir) in targets) ArgumentNullException.ThrowIfNull(dir, nameof(targets));
        if (atStep < 1) throw new ArgumentOutOfRangeException(nameof(atStep), atStep, "The target step must be at least 1.");
        if (!dtype.IsFloatingPoint) throw new ArgumentException($"The output is floating point; {dtype.TorchName} is not.", nameof(dtype));
        var gammas = targets.Select(t => PowerFunctionSchedule.GammaFromSigmaRel(t.SigmaRel)).ToArray();
        var all = PostHocSnapshot.List(snapshotsDir);
        var used = all.Where(s => s.Step <= atStep).ToList();
        if (used.Count == 0)
        {
            throw new ArgumentException($"{snapshotsDir}: no snapshot at or before step {atStep} (snapshots: {(all.Count == 0 ? "none" : string.Join(", ", all.Select(s => s.Step).Distinct()))}).");
        }
        var basis = used.Select(s => (s.Step, s.Gamma)).ToList();
        var coefficients = gammas.Select(g => PostHocSolver.Solve(basis, atStep, g)).ToArray();
        var (readers, names) = Parameters(used);

        for (int t = 0; t < targets.Count; t++)
        {
            var schedule = new PowerFunctionSchedule(gammas[t]);
            var x = coefficients[t];
            var chunks = names.Select(p => PlainSave.Whole(prefix + p.Name, dtype, p.Shape, () => Sum(readers, used, p.Name, p.Shape, x, dtype)));
            // The current decay is the one the target profile applies at atStep, as a tracked profile would have stored;
            // a power-function profile has no configured constant decay.
            var stored = new EmaCheckpoint.StoredState(atStep, double.NaN, schedule.DecayAt(atStep), schedule.Describe());
            var values = EmaCheckpoint.ProfileState(prefix, stored).ToList();
            values.Add(new(CheckpointKeys.Of(prefix, CheckpointKeys.PostHoc),
                string.Join("; ", used.Select((s, i) => $"{Path.GetFileName(s.Folder)}/{s.Profile} x {EmaSchedule.Number(x[i])}"))));
            PlainSave.OneRank(targets[t].OutputDir, values, chunks);
        }
        return targets.Select((target, t) => new PostHocResult(target.SigmaRel, gammas[t], atStep,
            used.Select((s, i) => (s, coefficients[t][i])).ToList(), all.Count - used.Count)).ToList();
    }

    // Every snapshot profile must hold the same floating-point parameters with the same shapes: checked on the
    // metadata, before anything is written.
    private static (DcpFolder[] Readers, List<(string Name, long[] Shape)> Names) Parameters(List<PostHocSnapshot> used)
    {
        var readers = new DcpFolder[used.Count];
        List<(string Name, long[] Shape)>? names = null;
        Dictionary<string, long[]>? shapes = null;
        for (int i = 0; i < used.Count; i++)
        {
            var snapshot = used[i];
            var reader = readers[i] = DcpFolder.Open(snapshot.Folder);
            var keyPrefix = snapshot.Profile + ".";
            var seen = new List<(string Name, long[] Shape)>();
            foreach (var entry in reader.Entries.OfType<DcpTensorEntry>())
            {
                if (!entry.Key.StartsWith(keyPrefix, StringComparison.Ordinal)) continue;
                var name = entry.Key[keyPrefix.Length..];
                if (shapes is not null)
                {
                    if (!shapes.TryGetValue(name, out var earlier))
                    {
                        throw new ArgumentException($"{snapshot.Folder}: '{entry.Key}' is in no earlier snapshot; all snapshots must hold the same parameters.");
                    }
                    if (!Shapes.Equal(earlier, entry.Size))
                    {
                        throw new ArgumentException($"{snapshot.Folder}: '{entry.Key}' has shape {Shapes.Text(entry.Size)}, earlier snapshots {Shapes.Text(earlier)}.");
                    }
                }
                if (!CheckpointDTypes.TryGetByTorchName(entry.DType, out var dtype) || !dtype.IsFloatingPoint)
                {
                    throw new CheckpointFormatException($"{snapshot.Folder}: '{entry.Key}' is {entry.DType}; snapshots hold floating-point tensors.");
                }
                seen.Add((name, entry.Size));
            }
            if (names is null)
            {
                names = seen;
                shapes = seen.ToDictionary(p => p.Name, p => p.Shape, StringComparer.Ordinal);
            }
            else if (seen.Count != names.Count)
            {
                var missing = shapes!.Keys.Except(seen.Select(p => p.Name));
                throw new ArgumentException($"{snapshot.Folder}: profile '{snapshot.Profile}' lacks {string.Join(", ", missing.Take(5))}; all snapshots must hold the same parameters.");
            }
        }
        return (readers, names!);
    }

    // Σ x_i θ_i for one tensor in fp32, one snapshot tensor read at a time, then cast to the output dtype.
    private static unsafe HostTensor Sum(DcpFolder[] readers, List<PostHocSnapshot> used, string name, long[] shape, double[] x, CheckpointDType dtype)
    {
        CheckpointDTypes.TryGetByTorchName("float32", out var f32);
        var sum = HostTensor.Allocate(f32, shape);
        try
        {
            NativeClear(sum);
            for (int i = 0; i < used.Count; i++)
            {
                using var value = readers[i].ReadTensor(used[i].Profile + "." + name);
                HostCasts.AddScaled((float*)sum.Data, value.Data, value.DType, (float)x[i], sum.Numel);
            }
            if (dtype.TorchName == "float32") return sum;
            using (sum)
            {
                var cast = HostTensor.Allocate(dtype, shape);
                HostCasts.Convert(sum.Data, f32, cast.Data, dtype, sum.Numel);
                return cast;
            }
        }
        catch
        {
            sum.Dispose();
            throw;
        }
    }

    private static unsafe void NativeClear(HostTensor tensor) =>
        System.Runtime.InteropServices.NativeMemory.Clear(tensor.Data, (nuint)tensor.ByteLength);
}

using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using EmaGen.Dcp;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// EDM2's post-hoc EMA (Karras et al. 2024): during training, <c>SaveSnapshot</c> (dense or sharded manager) periodically stores the
/// power-function profiles (fp16 by default, as EDM2); after training, <see cref="Synthesize"/> reconstructs the EMA of
/// any σ_rel at any snapshot step from them and writes it as an EMA checkpoint, so the averaging width is chosen after
/// the fact instead of guessed before.
/// </summary>
public static partial class PostHocEma
{
    /// <summary>
    /// Writes the manager's power-function profiles (<see cref="PowerFunctionSchedule"/>, optionally inside a rescaled
    /// <see cref="UpdateEverySchedule"/>) at its current step as the DCP folder <c>{snapshotsDir}/step-{step:D10}</c>:
    /// each profile's shadows under <c>{profile}.{name}</c> in <paramref name="dtype"/>, converted one tensor at a time.
    /// Other profiles are left out. Two to three profiles of different σ_rel give a good basis.
    /// </summary>
    /// <returns>The snapshot folder.</returns>
    /// <exception cref="InvalidOperationException">No profile is a power function, or no update has run yet.</exception>
    public static string SaveSnapshot<TModel>(EmaManager<TModel> ema, string snapshotsDir, torch.ScalarType dtype = torch.ScalarType.Float16)
        where TModel : torch.nn.Module, IEmaTracked<TModel>
    {
        ArgumentNullException.ThrowIfNull(ema);
        ArgumentNullException.ThrowIfNull(snapshotsDir);
        var profiles = ema.Profiles.Where(p => PostHocSolver.PowerFunctionGamma(p.Schedule) is not null).ToList();
        CheckSnapshotable(ema.Step, dtype, profiles.Count, () => string.Join(", ", ema.Profiles));
        var keys = profiles.Select(p => p.Name.Length == 0 ? PostHocSnapshot.UnnamedProfile : p.Name).ToList();
        var state = SnapshotValues(ema.Step, keys.Zip(profiles, (key, p) => (key, p.Schedule))).ToList();
        for (int k = 0; k < profiles.Count; k++)
        {
            var profile = profiles[k];
            foreach (var name in ema.TrackedNames)
            {
                var shadow = profile[name];
                state.Add(new(keys[k] + "." + name, new DeferredTensor(() =>
                {
                    using var _ = torch.no_grad();
                    return shadow.to_type(dtype, copy: true);
                })));
            }
        }
        var folder = Path.Combine(snapshotsDir, PostHocSnapshot.FolderName(ema.Step));
        DcpWriter.Save(folder, state);
        return folder;
    }

    private static void CheckSnapshotable(long step, torch.ScalarType dtype, int powerProfiles, Func<string> describeProfiles)
    {
        if (!KernelKinds.IsFloatingPoint(dtype)) throw new ArgumentException($"Snapshots are floating point; {dtype} is not.", nameof(dtype));
        if (step <= 0) throw new InvalidOperationException("A post-hoc snapshot needs at least one update (step 0 has no profile).");
        if (powerProfiles == 0)
        {
            throw new InvalidOperationException(
                $"Post-hoc snapshots need power-function profiles (EmaSchedule.PowerFunction); this manager has {describeProfiles()}.");
        }
    }

    // The values every snapshot folder carries: its format, step and profiles, and each profile's γ and schedule.
    private static IEnumerable<KeyValuePair<string, object?>> SnapshotValues(long step, IEnumerable<(string Key, EmaSchedule Schedule)> profiles)
    {
        var list = profiles.ToList();
        yield return new("_emagen.format", PostHocSnapshot.Format);
        yield return new("_emagen.step", step);
        yield return new("_emagen.profiles", string.Join(",", list.Select(p => p.Key)));
        foreach (var (key, schedule) in list)
        {
            yield return new(key + "._emagen.gamma", PostHocSolver.PowerFunctionGamma(schedule)!.Value);
            yield return new(key + "._emagen.schedule", schedule.Describe());
        }
    }

    /// <summary>
    /// Reconstructs the power-function EMA of width <paramref name="sigmaRel"/> at step <paramref name="atStep"/> from
    /// the snapshots in <paramref name="snapshotsDir"/> taken at or before it (later ones are ignored), and writes it to
    /// <paramref name="outputDir"/> as an EMA checkpoint that <see cref="EmaManager{TModel}.Load"/> reads (schedule
    /// <c>PowerFunction(σ_rel)</c>, step <paramref name="atStep"/>). Sums are taken in fp32 over one snapshot tensor at a
    /// time: memory is the output plus one tensor. <paramref name="atStep"/> is best a snapshot step, as in EDM2.
    /// </summary>
    /// <exception cref="ArgumentException">No usable snapshot, degenerate profiles, or snapshots that disagree on names or shapes.</exception>
    /// <exception cref="CheckpointFormatException">A snapshot folder is unreadable.</exception>
    public static PostHocResult Synthesize(string snapshotsDir, double sigmaRel, long atStep, string outputDir,
        string prefix = EmaCheckpoint.DefaultPrefix, torch.ScalarType dtype = torch.ScalarType.Float32)
    {
        ArgumentNullException.ThrowIfNull(outputDir);
        if (atStep < 1) throw new ArgumentOutOfRangeException(nameof(atStep), atStep, "The target step must be at least 1.");
        if (!KernelKinds.IsFloatingPoint(dtype)) throw new ArgumentException($"The output is floating point; {dtype} is not.", nameof(dtype));
        double gamma = PowerFunctionSchedule.GammaFromSigmaRel(sigmaRel);
        var all = PostHocSnapshot.List(snapshotsDir);
        var used = all.Where(s => s.Step <= atStep).ToList();
        if (used.Count == 0)
        {
            throw new ArgumentException($"{snapshotsDir}: no snapshot at or before step {atStep} (snapshots: {(all.Count == 0 ? "none" : string.Join(", ", all.Select(s => s.Step).Distinct()))}).");
        }
        var coefficients = PostHocSolver.Solve(used.Select(s => (s.Step, s.Gamma)).ToList(), atStep, gamma);

        var sums = new Dictionary<string, torch.Tensor>(StringComparer.Ordinal);
        try
        {
            Accumulate(used, coefficients, sums);
            var schedule = new PowerFunctionSchedule(gamma);
            var state = new List<KeyValuePair<string, object?>>();
            foreach (var (name, sum) in sums)
            {
                state.Add(new(prefix + name, dtype == torch.ScalarType.Float32 ? sum : new DeferredTensor(() => sum.to_type(dtype, copy: true))));
            }
            // The decay value is the one the target profile applies at atStep, as a tracked profile would have stored.
            state.AddRange(EmaCheckpoint.ProfileState(prefix, [], _ => throw new InvalidOperationException(), atStep, schedule.DecayAt(atStep), schedule.Describe()));
            state.Add(new(prefix + EmaCheckpoint.StateSegment + "posthoc",
                string.Join("; ", used.Select((s, i) => $"{Path.GetFileName(s.Folder)}/{s.Profile} x {EmaSchedule.Number(coefficients[i])}"))));
            DcpWriter.Save(outputDir, state);
        }
        finally
        {
            foreach (var t in sums.Values) t.Dispose();
        }
        return new PostHocResult(sigmaRel, gamma, atStep, used.Select((s, i) => (s, coefficients[i])).ToList(), all.Count - used.Count);
    }

    // Σ x_i θ_i per tensor name, in fp32, reading one snapshot tensor at a time.
    private static void Accumulate(List<PostHocSnapshot> used, double[] coefficients, Dictionary<string, torch.Tensor> sums)
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
                if (!sums.TryGetValue(name, out var sum))
                {
                    if (names is not null) throw new ArgumentException($"{snapshot.Folder}: '{entry.Key}' is in no earlier snapshot; all snapshots must hold the same parameters.");
                    sum = sums[name] = torch.zeros(value.shape, torch.ScalarType.Float32).DetachFromDisposeScope();
                }
                else if (!sum.shape.AsSpan().SequenceEqual(value.shape))
                {
                    throw new ArgumentException($"{snapshot.Folder}: '{entry.Key}' has shape [{string.Join(", ", value.shape)}], earlier snapshots [{string.Join(", ", sum.shape)}].");
                }
                InPlace.Release(sum.add_(value, alpha: coefficients[i]), sum);
            }
            if (names is null) names = seen;
            else if (!names.SetEquals(seen))
            {
                throw new ArgumentException($"{snapshot.Folder}: profile '{snapshot.Profile}' lacks {string.Join(", ", names.Except(seen).Take(5))}; all snapshots must hold the same parameters.");
            }
        }
    }
}

/// <summary>What <see cref="PostHocEma.Synthesize"/> computed: the target and each snapshot profile's coefficient (summing to 1).</summary>
public sealed record PostHocResult(double SigmaRel, double Gamma, long AtStep, IReadOnlyList<(PostHocSnapshot Snapshot, double Coefficient)> Terms, int IgnoredLaterSnapshots)
{
    public override string ToString() =>
        $"sigma_rel {SigmaRel} (gamma {Gamma:F4}) at step {AtStep}: {Terms.Count} snapshot profiles, {IgnoredLaterSnapshots} later ones ignored";
}

using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Threading.Tasks;
using EmaGen.Dcp;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// EDM2's post-hoc EMA (Karras et al. 2024): during training, <c>SaveSnapshot</c> (dense or sharded manager) periodically stores the
/// power-function profiles (fp16 by default, as EDM2); after training, <c>Synthesize</c> reconstructs the EMA of
/// any σ_rel at any snapshot step from them and writes it as an EMA checkpoint, so the averaging width is chosen after
/// the fact instead of guessed before.
/// </summary>
public static partial class PostHocEma
{
    /// <summary>
    /// Writes the manager's power-function profiles (<see cref="EmaSchedule.PowerFunction"/>, optionally inside a rescaled
    /// <see cref="EmaSchedule.UpdateEvery"/>) at its current step as the DCP folder <c>{snapshotsDir}/step-{step:D10}</c>:
    /// each profile's shadows under <c>{profile}.{name}</c> in <paramref name="dtype"/>, converted one tensor at a time
    /// as it is written. Other profiles are left out. Two to three profiles of different σ_rel give a good basis.
    /// A sharded manager's ranks all call it at the same step (with a timeout, see the other overload); each writes its
    /// shards into the one folder, which rank 0 commits. <c>Synthesize</c> reads both alike.
    /// </summary>
    /// <returns>The snapshot folder.</returns>
    /// <exception cref="InvalidOperationException">No profile is a power function, or no update has run yet.</exception>
    public static string SaveSnapshot<TModel>(EmaManagerBase<TModel> ema, string snapshotsDir, torch.ScalarType dtype = torch.ScalarType.Float16)
        where TModel : torch.nn.Module, IEmaTracked<TModel> =>
        SaveSnapshot(ema, snapshotsDir, TimeSpan.Zero, dtype);

    /// <summary>
    /// <see cref="SaveSnapshot{TModel}(EmaManagerBase{TModel}, string, torch.ScalarType)"/>, where rank 0 waits up to
    /// <paramref name="timeout"/> for the other ranks' shards and the other ranks wait as long for its commit.
    /// </summary>
    public static string SaveSnapshot<TModel>(EmaManagerBase<TModel> ema, string snapshotsDir, TimeSpan timeout, torch.ScalarType dtype = torch.ScalarType.Float16)
        where TModel : torch.nn.Module, IEmaTracked<TModel>
    {
        ArgumentNullException.ThrowIfNull(ema);
        ArgumentNullException.ThrowIfNull(snapshotsDir);
        var request = SnapshotRequest(ema, Path.Combine(snapshotsDir, PostHocSnapshot.FolderName(ema.Step)), timeout, dtype,
            shadow => TensorChunks.Deferred(shadow, dtype));
        ema.Saves.Run(request);
        return request.Directory;
    }

    /// <summary>
    /// <see cref="SaveSnapshot{TModel}(EmaManagerBase{TModel}, string, torch.ScalarType)"/> with only the conversion on
    /// the calling thread: the profiles are converted to <paramref name="dtype"/> now (for fp16, half the fp32 shadows'
    /// memory until the write ends) and written, fsynced and swapped in on a background task while training goes on.
    /// The task's result is the snapshot folder, and it carries any failure. Like the manager's <c>SaveAsync</c>, with
    /// which it takes turns, a call first waits for the manager's previous write.
    /// </summary>
    public static Task<string> SaveSnapshotAsync<TModel>(EmaManagerBase<TModel> ema, string snapshotsDir, torch.ScalarType dtype = torch.ScalarType.Float16)
        where TModel : torch.nn.Module, IEmaTracked<TModel> =>
        SaveSnapshotAsync(ema, snapshotsDir, TimeSpan.Zero, dtype);

    /// <summary>The asynchronous snapshot of a sharded manager's ranks (see <see cref="SaveSnapshot{TModel}(EmaManagerBase{TModel}, string, TimeSpan, torch.ScalarType)"/>).</summary>
    public static Task<string> SaveSnapshotAsync<TModel>(EmaManagerBase<TModel> ema, string snapshotsDir, TimeSpan timeout, torch.ScalarType dtype = torch.ScalarType.Float16)
        where TModel : torch.nn.Module, IEmaTracked<TModel>
    {
        ArgumentNullException.ThrowIfNull(ema);
        ArgumentNullException.ThrowIfNull(snapshotsDir);
        var folder = Path.Combine(snapshotsDir, PostHocSnapshot.FolderName(ema.Step));
        var write = ema.Saves.Start(() =>
        {
            var copies = new TensorCopies();
            try
            {
                using var _ = torch.no_grad();
                var request = SnapshotRequest(ema, folder, timeout, dtype, shadow =>
                {
                    var copy = shadow.to_type(dtype, copy: true).DetachFromDisposeScope();
                    copies.Add(copy);
                    return new TensorChunks.Local(copy, null);
                });
                return (request, copies);
            }
            catch
            {
                copies.Dispose();
                throw;
            }
        });
        return FolderWhenWritten(write, folder);
    }

    private static async Task<string> FolderWhenWritten(Task write, string folder)
    {
        await write.ConfigureAwait(false);
        return folder;
    }

    // This rank's part of the snapshot: the values, and each power-function profile's boxes as `local` makes them from
    // the shadows (lazy or eager conversions).
    private static SaveRequest SnapshotRequest<TModel>(EmaManagerBase<TModel> ema, string folder, TimeSpan timeout, torch.ScalarType dtype,
        Func<torch.Tensor, TensorChunks.Local> local)
        where TModel : torch.nn.Module, IEmaTracked<TModel>
    {
        var profiles = SnapshotProfiles(ema.Step, dtype, ema.ProfileList);
        var chunks = new List<SaveChunk>();
        foreach (var (index, key, _) in profiles) chunks.AddRange(ema.ChunksOf(index, key + ".", local));
        return TensorChunks.Request(folder, SnapshotSaveId(ema), ema.Placement, chunks, SnapshotValues(ema.Step, ema.SamplesSeen, profiles), timeout);
    }

    // One rank needs no agreed id; ranks agree on one from the step.
    private static string SnapshotSaveId<TModel>(EmaManagerBase<TModel> ema)
        where TModel : torch.nn.Module, IEmaTracked<TModel> =>
        ema.Placement.WorldSize == 1 ? Guid.NewGuid().ToString("N") : "posthoc-" + ema.Step.ToString(System.Globalization.CultureInfo.InvariantCulture);

    // The power-function profiles of a manager (profile names and schedules) with their snapshot keys; throws when
    // there is none to snapshot, or no update has run yet.
    private static List<(int Index, string Key, EmaSchedule Schedule)> SnapshotProfiles(long step, torch.ScalarType dtype,
        IEnumerable<EmaProfileBase> profiles)
    {
        if (!DTypes.IsFloatingPoint(dtype)) throw new ArgumentException($"Snapshots are floating point; {dtype} is not.", nameof(dtype));
        if (step <= 0) throw new InvalidOperationException("A post-hoc snapshot needs at least one update (step 0 has no profile).");
        var all = profiles.Select(p => (p.Index, p.Name, p.Schedule)).ToList();
        var power = all
            .Where(p => PostHocSolver.PowerFunctionGamma(p.Schedule) is not null)
            .Select(p => (p.Index, Key: p.Name.Length == 0 ? PostHocSnapshot.UnnamedProfile : p.Name, p.Schedule))
            .ToList();
        if (power.Count == 0)
        {
            throw new InvalidOperationException(
                $"Post-hoc snapshots need power-function profiles (EmaSchedule.PowerFunction); this manager has {string.Join(", ", all.Select(p => p.Name.Length == 0 ? p.Schedule.Describe() : $"{p.Name}: {p.Schedule.Describe()}"))}.");
        }
        return power;
    }

    // The values every snapshot folder carries: its format, step and profiles, and each profile's γ and schedule; on
    // the samples clock also the samples seen (0: the step clock, no key).
    private static IEnumerable<KeyValuePair<string, object?>> SnapshotValues(long step, long samples, List<(int Index, string Key, EmaSchedule Schedule)> profiles)
    {
        yield return new(CheckpointKeys.Of("", CheckpointKeys.Format), PostHocSnapshot.Format);
        yield return new(CheckpointKeys.Of("", CheckpointKeys.Step), step);
        if (samples > 0) yield return new(CheckpointKeys.Of("", CheckpointKeys.Samples), samples);
        yield return new(CheckpointKeys.Of("", CheckpointKeys.Profiles), string.Join(",", profiles.Select(p => p.Key)));
        foreach (var (_, key, schedule) in profiles)
        {
            yield return new(CheckpointKeys.Of(key + ".", CheckpointKeys.Gamma), PostHocSolver.PowerFunctionGamma(schedule)!.Value);
            yield return new(CheckpointKeys.Of(key + ".", CheckpointKeys.Schedule), schedule.Describe());
        }
    }
}

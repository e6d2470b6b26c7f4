using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Threading.Tasks;
using EmaGen.Dcp;
using TorchSharp;

namespace EmaGen;

public static partial class PostHocEma
{
    /// <summary>
    /// The sharded form of <see cref="SaveSnapshot{TModel}(EmaManager{TModel}, string, torch.ScalarType)"/>: every rank
    /// calls it at the same step and writes its shards (converted to <paramref name="dtype"/>) into one snapshot folder;
    /// rank 0 commits it, the others wait up to <paramref name="timeout"/>. <c>Synthesize</c> reads such folders like
    /// dense ones.
    /// </summary>
    public static string SaveSnapshot<TModel>(ShardedEmaManager<TModel> ema, string snapshotsDir, TimeSpan timeout, torch.ScalarType dtype = torch.ScalarType.Float16)
        where TModel : torch.nn.Module, IEmaTracked<TModel>
    {
        var (request, copies) = StageShardedSnapshot(ema, snapshotsDir, timeout, dtype);
        using (copies) DcpSave.Run(request);
        return request.Directory;
    }

    /// <summary>
    /// The sharded snapshot with only the conversion on the calling thread: this rank's shards are converted now, and the
    /// write, merge and commit (or the wait for it) run on a background task. Every rank calls it at the same step; the
    /// task's result is the snapshot folder, and it carries any failure (a missing rank times out there). Like
    /// <see cref="ShardedEmaManager{TModel}.SaveAsync"/>, with which it takes turns, a call first waits for the rank's
    /// previous write.
    /// </summary>
    public static Task<string> SaveSnapshotAsync<TModel>(ShardedEmaManager<TModel> ema, string snapshotsDir, TimeSpan timeout, torch.ScalarType dtype = torch.ScalarType.Float16)
        where TModel : torch.nn.Module, IEmaTracked<TModel>
    {
        ArgumentNullException.ThrowIfNull(ema);
        ArgumentNullException.ThrowIfNull(snapshotsDir);
        var folder = Path.Combine(snapshotsDir, PostHocSnapshot.FolderName(ema.Step));
        var write = ema.Saves.Start(() => StageShardedSnapshot(ema, snapshotsDir, timeout, dtype));
        return FolderWhenWritten(write, folder);
    }

    // This rank's part of the snapshot, with its shards converted now into copies the caller frees once it is written.
    private static (SaveRequest Request, IDisposable Copies) StageShardedSnapshot<TModel>(ShardedEmaManager<TModel> ema, string snapshotsDir, TimeSpan timeout, torch.ScalarType dtype)
        where TModel : torch.nn.Module, IEmaTracked<TModel>
    {
        ArgumentNullException.ThrowIfNull(ema);
        ArgumentNullException.ThrowIfNull(snapshotsDir);
        var profiles = SnapshotProfiles(ema.Step, dtype, ema.Profiles);
        var values = SnapshotValues(ema.Step, profiles).ToList();
        var shards = new List<DcpShard>();
        var copies = new TensorCopies();
        try
        {
            using (torch.no_grad())
            {
                foreach (var (index, key, _) in profiles)
                {
                    shards.AddRange(ema.ShardsOf(index, key + ".", shadow =>
                    {
                        var copy = shadow.to_type(dtype, copy: true).DetachFromDisposeScope();
                        copies.Add(copy);
                        return copy;
                    }));
                }
            }
            var folder = Path.Combine(snapshotsDir, PostHocSnapshot.FolderName(ema.Step));
            var saveId = "posthoc-" + ema.Step.ToString(System.Globalization.CultureInfo.InvariantCulture);
            return (TensorChunks.Sharded(folder, saveId, new RankInfo(ema.Rank, ema.WorldSize), shards, values, timeout), copies);
        }
        catch
        {
            copies.Dispose();
            throw;
        }
    }
}

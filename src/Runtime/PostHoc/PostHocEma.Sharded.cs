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
    /// calls it at the same step and writes its shards (converted to <paramref name="dtype"/>) into one snapshot folder
    /// through <see cref="DcpSave"/>; rank 0 commits it, the others wait up to <paramref name="timeout"/>.
    /// <c>Synthesize</c> reads such folders like dense ones.
    /// </summary>
    public static string SaveSnapshot<TModel>(ShardedEmaManager<TModel> ema, string snapshotsDir, TimeSpan timeout, torch.ScalarType dtype = torch.ScalarType.Float16)
        where TModel : torch.nn.Module, IEmaTracked<TModel>
    {
        var (folder, write) = PrepareShardedSnapshot(ema, snapshotsDir, timeout, dtype);
        write();
        return folder;
    }

    /// <summary>
    /// The sharded snapshot with only the conversion on the calling thread: this rank's shards are converted now, and the
    /// write, merge and commit (or the wait for it) run on a background task. Every rank calls it at the same step; the
    /// task's result is the snapshot folder, and it carries any failure (a missing rank times out there).
    /// </summary>
    public static Task<string> SaveSnapshotAsync<TModel>(ShardedEmaManager<TModel> ema, string snapshotsDir, TimeSpan timeout, torch.ScalarType dtype = torch.ScalarType.Float16)
        where TModel : torch.nn.Module, IEmaTracked<TModel>
    {
        var (folder, write) = PrepareShardedSnapshot(ema, snapshotsDir, timeout, dtype);
        return Task.Run(() =>
        {
            write();
            return folder;
        });
    }

    // Converts this rank's shards now; the returned action writes them, commits or waits, and frees the copies.
    private static (string Folder, Action Write) PrepareShardedSnapshot<TModel>(ShardedEmaManager<TModel> ema, string snapshotsDir, TimeSpan timeout, torch.ScalarType dtype)
        where TModel : torch.nn.Module, IEmaTracked<TModel>
    {
        ArgumentNullException.ThrowIfNull(ema);
        ArgumentNullException.ThrowIfNull(snapshotsDir);
        var profiles = SnapshotProfiles(ema.Step, dtype, ema.Profiles);
        var values = new Dictionary<string, object?>();
        foreach (var (key, value) in SnapshotValues(ema.Step, profiles)) values[key] = value;
        var shards = new List<DcpShard>();
        try
        {
            using (torch.no_grad())
            {
                foreach (var (index, key, _) in profiles)
                {
                    shards.AddRange(ema.ShardsOf(index, key + ".", shadow => shadow.to_type(dtype, copy: true).DetachFromDisposeScope()));
                }
            }
        }
        catch
        {
            foreach (var shard in shards) shard.Local.Dispose();
            throw;
        }
        var folder = Path.Combine(snapshotsDir, PostHocSnapshot.FolderName(ema.Step));
        var saveId = "posthoc-" + ema.Step.ToString(System.Globalization.CultureInfo.InvariantCulture);
        var me = new RankInfo(ema.Rank, ema.WorldSize);
        return (folder, () =>
        {
            try
            {
                DcpSave.Run(TensorChunks.Sharded(folder, saveId, me, shards, values, timeout));
            }
            finally
            {
                foreach (var shard in shards) shard.Local.Dispose();
            }
        });
    }
}

using System;
using System.Collections.Generic;
using System.Linq;
using System.Threading.Tasks;
using EmaGen.Dcp;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// An EMA of which this rank keeps only its shard: for each averaged parameter the box the generated shard map gives
/// it (<see cref="ShardLayout.Box"/>: dimension 0 by default, <see cref="EmaShardAttribute"/>/<see cref="EmaReplicateAttribute"/>
/// to change it), so the EMA costs about 1/N of a dense one per rank. The train model holds either full tensors (a
/// DDP-style trainer that wants a ZeRO-style EMA: each rank updates its slice in place from a view of the parameter, no
/// copy) or only the local shard of each parameter (an FSDP-style trainer; pass the global shapes).
/// All ranks write one DCP checkpoint together (<see cref="Save"/>); <see cref="EmaManagerBase{TModel}.Load"/> reads any
/// saved chunking. This is <see cref="EmaManagerBase{TModel}"/> with this rank's boxes: updates, profiles, loads and
/// state dicts behave as the dense manager's, and either manager loads the other's checkpoints.
/// </summary>
public sealed class ShardedEmaManager<TModel> : EmaManagerBase<TModel> where TModel : torch.nn.Module, IEmaTracked<TModel>
{
    /// <summary>Binds this rank's shard of <paramref name="model"/>'s EMA.</summary>
    /// <param name="model">The train model, with full parameters.</param>
    /// <param name="rank">This process's rank, or null for RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS.</param>
    /// <param name="worldSize">The number of ranks, or null as for <paramref name="rank"/>.</param>
    /// <param name="options">Decay, schedule or profiles; <see cref="EmaOptions.TrackBuffers"/> keeps whole (replicated) shadows of the buffers on every rank; <see cref="EmaOptions.PackParameters"/> is not supported here.</param>
    /// <param name="globalShapes">
    /// Null when the model's parameters are whole. For an FSDP-style model whose parameters hold only this rank's shard,
    /// the global shape of every averaged parameter by name; each local parameter must then have exactly its box's shape.
    /// </param>
    public ShardedEmaManager(TModel model, int? rank = null, int? worldSize = null, EmaOptions? options = null,
        IReadOnlyDictionary<string, long[]>? globalShapes = null)
        : base(model, options ?? new EmaOptions(), RankInfo.Resolve(rank, worldSize), globalShapes, canPack: false,
            (manager, k, profile) => new ShardedEmaProfile<TModel>((ShardedEmaManager<TModel>)manager, k, profile.Name, profile.Schedule))
    {
        if (Options.SwitchEvery is not null)
        {
            Dispose();
            throw new NotSupportedException(
                "Switch EMA (EmaOptions.SwitchEvery) needs the whole averaged weights, but each rank of a sharded EMA holds only its boxes; setting the full live model would need a gather EmaGen does not do. Switch with a dense EmaManager, or gather the EMA yourself.");
        }
    }

    public int Rank => Placement.Rank;

    public int WorldSize => Placement.WorldSize;

    /// <summary>The profiles, in <see cref="EmaOptions.Profiles"/> order (one unnamed profile when that is not set).</summary>
    public IReadOnlyList<ShardedEmaProfile<TModel>> Profiles => field ??= ProfileList.Cast<ShardedEmaProfile<TModel>>().ToArray();

    /// <summary>The profile named <paramref name="name"/>.</summary>
    /// <exception cref="KeyNotFoundException">No profile has that name.</exception>
    public ShardedEmaProfile<TModel> Profile(string name) => (ShardedEmaProfile<TModel>)ProfileNamed(name);

    /// <summary>Caller-owned copies of this rank's shards of profile <paramref name="profile"/>, with where each sits in the global tensor.</summary>
    public Dictionary<string, DcpShard> StateDict(int profile = 0)
    {
        using var _ = torch.no_grad();
        ThrowIfSwapped();
        return ReadOutShards(profile).ToDictionary(s => s.Key);
    }

    /// <summary>
    /// Copies this rank's shards back from <paramref name="state"/> (as <see cref="StateDict"/> returns them): every
    /// averaged name must be present, each at this rank's box of the same global shape, with the shadow's dtype; all is
    /// checked before anything is written.
    /// </summary>
    public void LoadStateDict(IReadOnlyDictionary<string, DcpShard> state, int profile = 0)
    {
        ArgumentNullException.ThrowIfNull(state);
        var mine = ShardsOf(profile, "", shadow => shadow);
        foreach (var own in mine)
        {
            if (state.TryGetValue(own.Key, out var shard)
                && (!shard.GlobalSize.AsSpan().SequenceEqual(own.GlobalSize) || !shard.Offsets.AsSpan().SequenceEqual(own.Offsets)))
            {
                throw new ArgumentException(
                    $"'{own.Key}': shard at ({string.Join(", ", shard.Offsets)}) of [{string.Join(", ", shard.GlobalSize)}] does not fit rank {Rank}'s box at ({string.Join(", ", own.Offsets)}) of [{string.Join(", ", own.GlobalSize)}].",
                    nameof(state));
            }
        }
        Profiles[profile].LoadStateDict(state.ToDictionary(kv => kv.Key, kv => kv.Value.Local), strict: true);
    }

    /// <summary>
    /// This rank's part of one DCP checkpoint written by all ranks: writes its data file and manifest; rank 0 then
    /// merges every rank's manifest (waiting up to <paramref name="timeout"/>) and commits, the other ranks wait for the
    /// commit. Every rank must call it with the same <paramref name="saveId"/>.
    /// </summary>
    public void Save(string directory, string saveId, TimeSpan timeout, string prefix = EmaCheckpoint.DefaultPrefix)
    {
        ThrowIfDisposed();
        ThrowIfSwapped();
        SaveNow(prefix, state => RankSave(directory, saveId, timeout, state));
    }

    /// <summary>
    /// <see cref="Save"/> with only a copy on the calling thread, like PyTorch's <c>dcp.async_save</c>: this rank's
    /// shards are copied into staging buffers (kept for the next call), then its data file, manifest and, on rank 0, the
    /// merge and commit (or, on other ranks, the wait for it) run on a background task while training goes on. Every
    /// rank calls it with the same <paramref name="saveId"/>; a call made while the previous write still runs first
    /// waits for it. The task carries any failure (a missing rank times out there), and the previous checkpoint stays.
    /// </summary>
    public Task SaveAsync(string directory, string saveId, TimeSpan timeout, string prefix = EmaCheckpoint.DefaultPrefix) =>
        SaveInBackground(prefix, state => RankSave(directory, saveId, timeout, state));

    // This rank's part of the save: its boxes as chunks, the values (written by rank 0).
    private SaveRequest RankSave(string directory, string saveId, TimeSpan timeout, List<KeyValuePair<string, object?>> state) =>
        TensorChunks.Request(directory, saveId, Placement, state.Select(kv => kv.Value switch
            {
                DcpShard shard => TensorChunks.Box(shard.Key, new TensorChunks.Local(shard.Local, null), shard.GlobalSize, shard.Offsets, shard.Replicated),
                DeferredShard deferred => TensorChunks.Box(deferred.Key, new TensorChunks.Local(null, deferred.Later), deferred.GlobalSize, deferred.Offsets, deferred.Replicated),
                _ => null,
            }).OfType<SaveChunk>().ToList(), state.Where(kv => kv.Value is not (DcpShard or DeferredShard)), timeout);
}

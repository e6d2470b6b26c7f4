using System;
using System.Collections.Generic;
using System.Linq;
using System.Threading.Tasks;
using EmaGen.Dcp;
using TorchSharp;

namespace EmaGen;

// This rank's shards in and out: state dicts, and one DCP checkpoint written by all ranks, read back at any chunking.
public sealed partial class ShardedEmaManager<TModel>
{
    /// <summary>Caller-owned copies of this rank's shards of profile <paramref name="profile"/>, with where each sits in the global tensor.</summary>
    public Dictionary<string, DcpShard> StateDict(int profile = 0)
    {
        using var _ = torch.no_grad();
        return _entries.ToDictionary(e => e.Info.Name,
            e => new DcpShard(e.Info.Name, e.Shadows[profile].clone(), e.Info.Shape, e.Offsets, e.Info.ShardDim == ShardLayout.Replicated));
    }

    /// <summary>
    /// Copies this rank's shards back from <paramref name="state"/> (as <see cref="StateDict"/> returns them): every
    /// averaged name must be present (strict), with the same global shape, box and dtype; all is checked before anything
    /// is written.
    /// </summary>
    public void LoadStateDict(IReadOnlyDictionary<string, DcpShard> state, int profile = 0)
    {
        ArgumentNullException.ThrowIfNull(state);
        ObjectDisposedException.ThrowIf(_disposed, this);
        var missing = _byName.Keys.Where(n => !state.ContainsKey(n)).Order(StringComparer.Ordinal).ToList();
        var unexpected = state.Keys.Where(n => !_byName.ContainsKey(n)).Order(StringComparer.Ordinal).ToList();
        if (missing.Count > 0 || unexpected.Count > 0)
        {
            throw new ArgumentException($"Sharded EMA state does not match: {missing.Count} missing ({string.Join(", ", missing.Take(5))}), {unexpected.Count} unexpected ({string.Join(", ", unexpected.Take(5))}).", nameof(state));
        }
        foreach (var (name, shard) in state)
        {
            var e = _byName[name];
            if (!shard.GlobalSize.AsSpan().SequenceEqual(e.Info.Shape) || !shard.Offsets.AsSpan().SequenceEqual(e.Offsets)
                || !shard.Local.shape.AsSpan().SequenceEqual(e.Sizes) || shard.Local.dtype != e.Shadow.dtype)
            {
                throw new ArgumentException($"'{name}': shard {shard.Local.dtype} [{string.Join(", ", shard.Local.shape)}] at ({string.Join(", ", shard.Offsets)}) of [{string.Join(", ", shard.GlobalSize)}] does not fit rank {Rank}'s {e.Shadow.dtype} [{string.Join(", ", e.Sizes)}] at ({string.Join(", ", e.Offsets)}).", nameof(state));
            }
        }
        using var _ = torch.no_grad();
        foreach (var (name, shard) in state) InPlace.Release(_byName[name].Shadows[profile].copy_(shard.Local), _byName[name].Shadows[profile]);
    }

    /// <summary>
    /// This rank's part of one DCP checkpoint written by all ranks: writes its data file and manifest; rank 0 then
    /// merges every rank's manifest (waiting up to <paramref name="timeout"/>) and commits, the other ranks wait for the
    /// commit. Every rank must call it with the same <paramref name="saveId"/>.
    /// </summary>
    public void Save(string directory, string saveId, TimeSpan timeout, string prefix = EmaCheckpoint.DefaultPrefix)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var (shards, values) = StateToSave(prefix, (profile, i) => _entries[i].Shadows[profile]);
        DcpSave.Run(TensorChunks.Sharded(directory, saveId, new RankInfo(Rank, WorldSize), shards, values, timeout));
    }

    /// <summary>
    /// <see cref="Save"/> with only a copy on the calling thread: this rank's shards are copied into staging tensors
    /// (kept for the next call: one more copy of this rank's EMA), then its data file, manifest and, on rank 0, the
    /// merge and commit (or, on other ranks, the wait for it) run on a background task while training goes on. Every
    /// rank calls it with the same <paramref name="saveId"/>; a call made while the previous write still runs first
    /// waits for it. The task carries any failure (a missing rank times out there), and the previous checkpoint stays.
    /// </summary>
    public Task SaveAsync(string directory, string saveId, TimeSpan timeout, string prefix = EmaCheckpoint.DefaultPrefix)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return _saves.Start(_arenas, staged =>
        {
            var (shards, values) = StateToSave(prefix, (profile, i) => staged[profile][i]!);
            return TensorChunks.Sharded(directory, saveId, new RankInfo(Rank, WorldSize), shards, values, timeout);
        });
    }

    /// <summary>This rank's asynchronous saves: <see cref="SaveAsync"/> and the post-hoc snapshots taken from it.</summary>
    internal AsyncSave Saves => _saves;

    private (List<DcpShard> Shards, Dictionary<string, object?> Values) StateToSave(string prefix, Func<int, int, torch.Tensor> shadowOf)
    {
        var shards = new List<DcpShard>();
        var values = new Dictionary<string, object?>();
        if (_namedProfiles)
        {
            foreach (var (key, value) in EmaCheckpoint.ManagerState(prefix, Step, _profiles.Select(p => p.Name))) values[key] = value;
        }
        for (int k = 0; k < _profiles.Length; k++)
        {
            var profilePrefix = ProfilePrefix(prefix, k);
            for (int i = 0; i < _entries.Count; i++)
            {
                var e = _entries[i];
                shards.Add(new DcpShard(profilePrefix + e.Info.Name, shadowOf(k, i), e.Info.Shape, e.Offsets, e.Info.ShardDim == ShardLayout.Replicated));
            }
            var stored = new EmaCheckpoint.StoredState(Step, Decay, _currentDecay[k], _profiles[k].Schedule.Describe());
            foreach (var (key, value) in EmaCheckpoint.ProfileState(profilePrefix, [], _ => throw new InvalidOperationException(), stored))
            {
                values[key] = value;
            }
        }
        return (shards, values);
    }

    // This rank's shards of one profile under keyPrefix, each tensor made by `local` from the shadow (a view or a copy).
    internal List<DcpShard> ShardsOf(int profile, string keyPrefix, Func<torch.Tensor, torch.Tensor> local)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return _entries.Select(e => new DcpShard(keyPrefix + e.Info.Name, local(e.Shadows[profile]), e.Info.Shape, e.Offsets, e.Info.ShardDim == ShardLayout.Replicated)).ToList();
    }

    private string ProfilePrefix(string prefix, int profile) => _namedProfiles ? prefix + _profiles[profile].Name + "." : prefix;

    /// <summary>
    /// Reads this rank's box of every averaged parameter from any DCP folder with these keys (any saved chunking: dense,
    /// another world size, PyTorch's), reading only the chunks that overlap it. All is read and checked first; a
    /// failed load changes nothing.
    /// </summary>
    public void Load(string directory, string prefix = EmaCheckpoint.DefaultPrefix, bool allowScheduleMismatch = false)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var reader = DcpReader.Open(directory);
        var stored = EmaCheckpoint.ReadProfileNames(reader, directory, prefix);
        if (_namedProfiles != (stored is not null) || (stored is not null && !stored.SequenceEqual(_profiles.Select(p => p.Name))))
        {
            throw new ArgumentException(
                $"{directory}: the checkpoint holds {(stored is null ? "a single-profile EMA" : "EMA profiles " + string.Join(", ", stored))} under '{prefix}', this manager has {(_namedProfiles ? "profiles " + string.Join(", ", _profiles.Select(p => p.Name)) : "one unnamed profile")}.");
        }
        // Shapes, dtypes, schedules and steps are checked from the metadata and the small values before any tensor is read.
        for (int k = 0; k < _profiles.Length; k++)
        {
            foreach (var e in _entries)
            {
                var key = ProfilePrefix(prefix, k) + e.Info.Name;
                var saved = reader.TensorEntry(key);
                if (!saved.Size.AsSpan().SequenceEqual(e.Info.Shape))
                {
                    throw new ArgumentException($"{directory}: '{key}' has shape [{string.Join(", ", saved.Size)}], expected [{string.Join(", ", e.Info.Shape)}].");
                }
                if (!TorchDTypes.TryGet(saved.DType, out var dtype, out _) || dtype != e.Shadow.dtype)
                {
                    throw new ArgumentException($"{directory}: '{key}' is {saved.DType}, expected {e.Shadow.dtype}.");
                }
            }
        }
        var states = new List<EmaCheckpoint.StoredState?>();
        long? step = EmaCheckpoint.ReadProfileStates(reader, directory,
            Enumerable.Range(0, _profiles.Length).Select(k => (ProfilePrefix(prefix, k), _profiles[k].Name, _profiles[k].Schedule)),
            named: _namedProfiles, allowScheduleMismatch, states);

        var staged = new List<(torch.Tensor Shadow, torch.Tensor Data)>();
        try
        {
            for (int k = 0; k < _profiles.Length; k++)
            {
                var profilePrefix = ProfilePrefix(prefix, k);
                foreach (var e in _entries)
                {
                    staged.Add((e.Shadows[k], reader.ReadSlice(profilePrefix + e.Info.Name, e.Offsets, e.Sizes)));
                }
            }
            using var _ = torch.no_grad();
            foreach (var (shadow, data) in staged) InPlace.Release(shadow.copy_(data), shadow);
            Step = step ?? Step;
            for (int k = 0; k < _profiles.Length; k++)
            {
                if (states[k] is { } state && !double.IsNaN(state.CurrentDecay)) _currentDecay[k] = state.CurrentDecay;
            }
        }
        finally
        {
            foreach (var (_, data) in staged) data.Dispose();
        }
    }
}

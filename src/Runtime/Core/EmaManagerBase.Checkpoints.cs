using System;
using System.Collections.Generic;
using System.Linq;
using System.Threading.Tasks;
using EmaGen.Dcp;
using TorchSharp;

namespace EmaGen;

// Shadows in and out, for both managers: checkpoint state, load, state dicts. A dense manager's boxes are whole.
public abstract partial class EmaManagerBase<TModel>
{
    /// <summary>
    /// Loads shadows and step from a DCP folder written by either manager's <c>Save</c> (or any with these keys, at any
    /// chunking: dense, another world size, PyTorch's), reading only the chunks that overlap this manager's boxes. Names,
    /// dtypes, shapes, profiles and schedules are checked from the metadata before any tensor is read; everything is
    /// read before anything is written, so a failed load changes nothing. A tied tensor stored under several of its names
    /// (as EmaGen wrote it before tied weights had one shadow) loads when every copy holds the same bits; the keys set
    /// aside are in <see cref="LastLoadDroppedKeys"/>.
    /// </summary>
    /// <param name="directory">The checkpoint folder.</param>
    /// <param name="strict">When true, the checkpoint must hold exactly the averaged names (and profiles) under <paramref name="prefix"/>; otherwise the names and profiles both sides have are loaded.</param>
    /// <param name="prefix">Key prefix used when saving.</param>
    /// <param name="allowScheduleMismatch">Load even when the checkpoint was written with another decay schedule.</param>
    /// <exception cref="CheckpointFormatException">The folder is not a readable checkpoint.</exception>
    /// <exception cref="ArgumentException">Names, shapes, dtypes, profiles or schedules do not fit.</exception>
    public void Load(string directory, bool strict = true, string prefix = EmaCheckpoint.DefaultPrefix, bool allowScheduleMismatch = false)
    {
        ThrowIfDisposed();
        ThrowIfSwapped();
        var reader = DcpReader.Open(directory);
        var stored = EmaCheckpoint.ReadProfileNames(reader, directory, prefix);
        var toLoad = ProfilesToLoad(directory, prefix, stored, strict);
        foreach (var profile in toLoad) CheckpointFilters.Check(reader, directory, ProfilePrefix(prefix, profile), _filters, strict);

        var reads = new List<(int Profile, List<(int Item, List<string> Names)> Items)>();
        foreach (var profile in toLoad)
        {
            var entries = EmaCheckpoint.TensorEntries(reader, ProfilePrefix(prefix, profile));
            CheckFits(entries.Select(e => (e.Name, TorchDTypes.TryGet(e.Entry.DType, out var t, out _) ? t : (torch.ScalarType?)null, e.Entry.Size)),
                strict, global: true, nameof(directory));
            reads.Add((profile, NamesByItem(entries.Select(e => e.Name))));
        }
        var states = new List<EmaCheckpoint.StoredState?>();
        long? step = EmaCheckpoint.ReadProfileStates(reader, directory,
            toLoad.Select(k => (ProfilePrefix(prefix, k), _profiles[k].Name, _profiles[k].Schedule)), named: stored is not null, allowScheduleMismatch, states);

        var staged = new List<(torch.Tensor Shadow, torch.Tensor Data)>();
        var dropped = new List<string>();
        var alphas = new List<(int Profile, double Alpha)>();
        try
        {
            foreach (var (profile, items) in reads)
            {
                var profilePrefix = ProfilePrefix(prefix, profile);
                if (IsBiasCorrected(profile))
                {
                    StageBemaLoad(reader, directory, profile, profilePrefix, items, staged);
                    alphas.Add((profile, EmaCheckpoint.ReadBemaAlpha(reader, directory, profilePrefix)));
                    continue;
                }
                foreach (var (i, names) in items)
                {
                    var data = reader.ReadSlice(profilePrefix + names[0], _items[i].Offsets, _items[i].Sizes);
                    staged.Add((_arenas[profile][i]!, data));
                    for (int n = 1; n < names.Count; n++)
                    {
                        using var other = reader.ReadSlice(profilePrefix + names[n], _items[i].Offsets, _items[i].Sizes);
                        RequireSameBits(directory, profilePrefix + names[0], data, profilePrefix + names[n], other, nameof(directory));
                        dropped.Add(profilePrefix + names[n]);
                    }
                }
            }
            Commit(staged);
            LastLoadDroppedKeys = dropped;
            Step = step ?? Step;
            if (step is { } loaded) RestoreClock(loaded, states.Select(st => st?.Samples).ToArray(), toLoad.ToArray());
            foreach (var (profile, alpha) in alphas) _alpha[profile] = alpha;
            for (int n = 0; n < toLoad.Count; n++)
            {
                if (states[n] is { } state && !double.IsNaN(state.CurrentDecay)) _currentDecay[toLoad[n]] = state.CurrentDecay;
            }
        }
        finally
        {
            foreach (var (_, data) in staged) data.Dispose();
        }
    }

    // Which profiles a checkpoint with profiles `stored` (null: a single-profile checkpoint) can fill.
    private List<int> ProfilesToLoad(string directory, string prefix, IReadOnlyList<string>? stored, bool strict)
    {
        if (!NamedProfiles)
        {
            if (stored is not null)
            {
                throw new ArgumentException(
                    $"{directory}: the checkpoint holds EMA profiles {string.Join(", ", stored)} under '{prefix}'; build the manager with EmaOptions.Profiles, or load one profile with prefix '{prefix}{stored[0]}.'.");
            }
            return [0];
        }
        var names = _profiles.Select(p => p.Name).ToList();
        if (stored is null)
        {
            throw new ArgumentException(
                $"{directory}: the checkpoint holds a single-profile EMA under '{prefix}' (no '{CheckpointKeys.Of(prefix, CheckpointKeys.Profiles)}'), this manager has profiles {string.Join(", ", names)}; load it into one profile with LoadStateDict or a single-profile manager.");
        }
        var present = Enumerable.Range(0, names.Count).Where(k => stored.Contains(names[k])).ToList();
        bool missing = present.Count < names.Count, extra = stored.Any(n => !names.Contains(n));
        if ((strict && (missing || extra)) || present.Count == 0)
        {
            throw new ArgumentException(
                $"{directory}: the checkpoint's EMA profiles ({string.Join(", ", stored)}) do not match this manager's ({string.Join(", ", names)}).");
        }
        return present;
    }

    /// <summary>
    /// The keys the last successful <see cref="Load"/> or <c>LoadStateDict</c> set aside: other names of a tied tensor
    /// (see <see cref="TiedAliases"/>) whose values were checked bit-equal to the name it loaded. Empty when there were none.
    /// </summary>
    public IReadOnlyList<string> LastLoadDroppedKeys { get; private set; } = [];

    // The names of a checkpoint or state dict that reach each item, by item, the owner's name first: a checkpoint written
    // before tied weights had one shadow holds a tied tensor under each of its names.
    private List<(int Item, List<string> Names)> NamesByItem(IEnumerable<string> names)
    {
        var byItem = new SortedDictionary<int, List<string>>();
        foreach (var name in names.Order(StringComparer.Ordinal))
        {
            if (!TryItem(name, out int i)) continue;
            if (!byItem.TryGetValue(i, out var list)) byItem[i] = list = new List<string>();
            if (name == _items[i].Info.Name) list.Insert(0, name);
            else list.Add(name);
        }
        return byItem.Select(kv => (kv.Key, kv.Value)).ToList();
    }

    // Two names of one tied tensor must hold one value: otherwise nothing says which is its EMA.
    private static void RequireSameBits(string where, string kept, torch.Tensor keptData, string other, torch.Tensor otherData, string parameter)
    {
        using var a = keptData.cpu().contiguous();
        using var b = otherData.cpu().contiguous();
        if (a.dtype == b.dtype && a.shape.AsSpan().SequenceEqual(b.shape) && a.bytes.SequenceEqual(b.bytes)) return;
        throw new ArgumentException(
            $"{where}: '{kept}' and '{other}' name one tied tensor of {typeof(TModel).Name} but hold different values; keep one of the two keys.", parameter);
    }

    private string ProfilePrefix(string prefix, int profile) => NamedProfiles ? prefix + _profiles[profile].Name + "." : prefix;

    /// <summary>
    /// Every key a checkpoint of this manager holds, in order: each profile's boxes (<see cref="DcpShard"/>: a dense
    /// manager's are whole), and the stored values. Without <paramref name="staged"/> (a synchronous save) the boxes are
    /// the shadows themselves, and a BEMA profile's corrected weights are <see cref="DeferredShard"/>s made one at a time
    /// by the write; with it (an asynchronous save) they are the staging views (<see cref="StagedSets"/>: the shadows,
    /// then per BEMA profile θ₀ and the corrected weights). A BEMA profile's EMA and θ₀ sit under the resume keys.
    /// </summary>
    private List<KeyValuePair<string, object?>> StateToSave(string prefix, torch.Tensor?[][]? staged = null)
    {
        var state = new List<KeyValuePair<string, object?>>();
        if (NamedProfiles) state.AddRange(EmaCheckpoint.ManagerState(prefix, Step, _profiles.Select(p => p.Name)));
        var shadows = staged ?? _arenas.Select(a => Enumerable.Range(0, _items.Length).Select(i => a[i]).ToArray()).ToArray();
        int bema = _profiles.Length;
        for (int k = 0; k < _profiles.Length; k++)
        {
            var profilePrefix = ProfilePrefix(prefix, k);
            int profile = k;
            if (IsBiasCorrected(k))
            {
                for (int i = 0; i < _items.Length; i++)
                {
                    var item = _items[i];
                    var key = profilePrefix + item.Info.Name;
                    state.Add(new(key, staged is null
                        ? DeferredReadOut(k, i, key)
                        : new DcpShard(key, staged[bema + 1][i]!, item.Info.Shape, item.Offsets, item.Replicated)));
                }
                var anchors = staged?[bema];
                state.AddRange(BemaResumeState(k, profilePrefix, i => shadows[profile][i]!, anchors is null ? i => _anchors[profile]![i]! : i => anchors[i]!));
                bema += 2;
            }
            else
            {
                foreach (var shard in Shards(profilePrefix, i => shadows[profile][i]!)) state.Add(new(shard.Key, shard));
            }
            if (_aliases.Length > 0) state.Add(EmaCheckpoint.AliasState(profilePrefix, TiedAliases));
            var stored = new EmaCheckpoint.StoredState(Step, Decay, _currentDecay[k], _profiles[k].Schedule.Describe(), SampleState(k));
            state.AddRange(EmaCheckpoint.ProfileState(profilePrefix, stored));
            if (_filters is not null) state.Add(new(CheckpointFilters.Key(profilePrefix), _filters));
        }
        return state;
    }

    // What an asynchronous save stages, kept from save to save: every profile's shadows (copied), then per BEMA profile
    // its θ₀ (copied) and its corrected weights, formed straight from the live shadows into their staging buffers.
    private List<StagedSet> StagedSets()
    {
        var sets = _arenas.Select(a => new StagedSet(a)).ToList();
        for (int k = 0; k < _profiles.Length; k++)
        {
            if (_anchors[k] is not { } anchor) continue;
            int profile = k;
            sets.Add(new StagedSet(anchor));
            sets.Add(new StagedSet(_arenas[k], views => WriteReadOut(profile, i => _arenas[profile][i]!, i => views[i]!)));
        }
        return sets;
    }

    /// <summary>
    /// Stages the shadows on the calling thread (copies kept for the next call), then writes the save
    /// <paramref name="request"/> builds from that state on a task that completes once the checkpoint is committed
    /// (<see cref="SaveQueue"/>, shaped like PyTorch's <c>dcp.async_save</c>).
    /// </summary>
    private protected Task SaveInBackground(string prefix, Func<List<KeyValuePair<string, object?>>, SaveRequest> request)
    {
        ThrowIfDisposed();
        ThrowIfSwapped();
        return _saves.Start(StagedSets(), staged => request(StateToSave(prefix, staged)));
    }

    /// <summary>A synchronous save of the state <paramref name="request"/> turns into this rank's save.</summary>
    private protected void SaveNow(string prefix, Func<List<KeyValuePair<string, object?>>, SaveRequest> request) =>
        Saves.Run(request(StateToSave(prefix)));

    /// <summary>Caller-owned copies of this rank's boxes of profile <paramref name="profile"/> as a reader gets them (a BEMA profile's corrected).</summary>
    internal List<DcpShard> ReadOutShards(int profile)
    {
        ThrowIfDisposed();
        return Shards("", i => ReadOut(profile, i, _arenas[profile][i]!));
    }

    /// <summary>This manager's saves, synchronous and asynchronous (<c>Save</c>, <c>SaveAsync</c> and the post-hoc snapshots taken from it), in call order.</summary>
    internal SaveQueue Saves => _saves;

    /// <summary>This rank's boxes of profile <paramref name="profile"/> under <paramref name="keyPrefix"/>, each tensor made by <paramref name="local"/> from the shadow.</summary>
    internal List<DcpShard> ShardsOf(int profile, string keyPrefix, Func<torch.Tensor, torch.Tensor> local)
    {
        ThrowIfDisposed();
        return Shards(keyPrefix, i => local(_arenas[profile][i]!));
    }

    /// <summary>This rank's boxes of profile <paramref name="profile"/> under <paramref name="keyPrefix"/> as save chunks, each box's data made by <paramref name="local"/> from the shadow.</summary>
    internal List<SaveChunk> ChunksOf(int profile, string keyPrefix, Func<torch.Tensor, TensorChunks.Local> local)
    {
        ThrowIfDisposed();
        return _items.Select((item, i) => TensorChunks.Box(keyPrefix + item.Info.Name, local(_arenas[profile][i]!), item.Info.Shape, item.Offsets,
            item.Replicated)).ToList();
    }

    // Every item's box under keyPrefix: where it sits in the global tensor, with the tensor local(item) makes.
    private List<DcpShard> Shards(string keyPrefix, Func<int, torch.Tensor> local) =>
        _items.Select((item, i) => new DcpShard(keyPrefix + item.Info.Name, local(i), item.Info.Shape, item.Offsets, item.Replicated)).ToList();

    Dictionary<string, torch.Tensor> IProfileHost.StateDict(int profile)
    {
        ThrowIfDisposed();
        ThrowIfSwapped();
        using var _ = torch.no_grad();
        var state = new Dictionary<string, torch.Tensor>(_items.Length, StringComparer.Ordinal);
        for (int i = 0; i < _items.Length; i++) state.Add(_items[i].Info.Name, ReadOut(profile, i, _arenas[profile][i]!));
        return state;
    }

    void IProfileHost.LoadStateDict(int profile, IReadOnlyDictionary<string, torch.Tensor> state, bool strict)
    {
        ArgumentNullException.ThrowIfNull(state);
        ThrowIfDisposed();
        ThrowIfSwapped();
        if (IsBiasCorrected(profile))
        {
            throw new NotSupportedException(
                $"Profile {profile} is a BEMA profile: its state dict holds the bias-corrected weights, which cannot be loaded back as its EMA; resume with Save and Load, which keep the EMA, θ₀ and α.");
        }
        foreach (var (name, tensor) in state)
        {
            if (tensor is null) throw new ArgumentException($"EMA state dict does not fit {typeof(TModel).Name}: '{name}': value is null.", nameof(state));
        }
        CheckFits(state.Select(kv => (kv.Key, (torch.ScalarType?)kv.Value.dtype, kv.Value.shape)), strict, global: false, nameof(state));
        var plan = new List<(torch.Tensor, torch.Tensor)>();
        var dropped = new List<string>();
        foreach (var (i, names) in NamesByItem(state.Keys))
        {
            plan.Add((_arenas[profile][i]!, state[names[0]]));
            for (int n = 1; n < names.Count; n++)
            {
                RequireSameBits("EMA state dict", names[0], state[names[0]], names[n], state[names[n]], nameof(state));
                dropped.Add(names[n]);
            }
        }
        Commit(plan);
        LastLoadDroppedKeys = dropped;
    }

    // The rules of a load, applied to names, dtypes and shapes alone: to a state dict (this manager's box shapes), or to
    // a checkpoint's metadata (global shapes) before any of its tensors is read, so a checkpoint that cannot fit costs
    // no memory. A null dtype is one that TorchSharp cannot represent.
    private void CheckFits(IEnumerable<(string Name, torch.ScalarType? DType, long[] Shape)> entries, bool strict, bool global, string parameter)
    {
        var list = entries.ToList();
        if (strict)
        {
            // A tied tensor is present under any of its names.
            var covered = new HashSet<int>();
            foreach (var e in list)
            {
                if (TryItem(e.Name, out int i)) covered.Add(i);
            }
            var missing = Enumerable.Range(0, _items.Length).Where(i => !covered.Contains(i)).Select(i => _items[i].Info.Name).Order(StringComparer.Ordinal).ToList();
            var unexpected = list.Select(e => e.Name).Where(n => !TryItem(n, out _)).Distinct().Order(StringComparer.Ordinal).ToList();
            if (missing.Count > 0 || unexpected.Count > 0)
            {
                var parts = new List<string>();
                if (missing.Count > 0) parts.Add($"{missing.Count} missing ({Sample(missing)})");
                if (unexpected.Count > 0) parts.Add($"{unexpected.Count} unexpected ({Sample(unexpected)})");
                throw new ArgumentException($"EMA state dict does not match {typeof(TModel).Name}: {string.Join("; ", parts)}.", parameter);
            }
        }
        var problems = new List<string>();
        foreach (var (name, dtype, shape) in list.OrderBy(e => e.Name, StringComparer.Ordinal))
        {
            if (!TryItem(name, out int i)) continue;
            var item = _items[i];
            if (dtype != item.Info.ShadowDType) problems.Add($"'{name}': dtype {dtype?.ToString() ?? "unsupported"}, expected {item.Info.ShadowDType}");
            var expected = global ? item.Info.Shape : item.Sizes;
            if (!shape.AsSpan().SequenceEqual(expected)) problems.Add($"'{name}': shape [{string.Join(", ", shape)}], expected [{string.Join(", ", expected)}]");
        }
        if (problems.Count > 0)
        {
            throw new ArgumentException($"EMA state dict does not fit {typeof(TModel).Name}: {problems.Count} mismatch(es): {Sample(problems, "; ")}.", parameter);
        }
    }

    private void Commit(List<(torch.Tensor Target, torch.Tensor Source)> plan)
    {
        try
        {
            using var _ = torch.no_grad();
            foreach (var (target, source) in plan) InPlace.Release(target.copy_(source), target);
        }
        finally
        {
            // A loaded shadow may hold non-finite elements: the op path reads again which tensors can heal.
            _torch.ShadowsWritten();
        }
    }
}

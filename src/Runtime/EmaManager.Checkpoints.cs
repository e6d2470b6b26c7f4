using System;
using System.Collections.Generic;
using System.Linq;
using System.Threading.Tasks;
using EmaGen.Dcp;
using TorchSharp;

namespace EmaGen;

// Save and Load: the shadows of every profile as one PyTorch Distributed Checkpoint folder.
public sealed partial class EmaManager<TModel>
{
    /// <summary>
    /// Writes the shadows as a PyTorch Distributed Checkpoint folder: each shadow under <c>{prefix}{name}</c> (one full
    /// chunk), plus the manager's own state as values under <c>{prefix}_emagen.step</c>, <c>.decay</c>,
    /// <c>.schedule</c> and <c>.format</c>. With named profiles each profile is such a subtree under
    /// <c>{prefix}{profile}.</c> (so one profile loads on its own with that prefix), and <c>{prefix}_emagen.profiles</c>
    /// lists them. The folder replaces a previous checkpoint at <paramref name="directory"/> only once complete.
    /// </summary>
    /// <param name="directory">The checkpoint folder (created or replaced).</param>
    /// <param name="prefix">Key prefix, so the EMA can share a key space with model and optimizer state (PyTorch style: <c>"ema."</c>).</param>
    /// <param name="options">Writer options (naming for older PyTorch, files per rank).</param>
    public void Save(string directory, string prefix = EmaCheckpoint.DefaultPrefix, DcpWriteOptions? options = null)
    {
        ThrowIfDisposed();
        ThrowIfSwapped();
        DcpWriter.Save(directory, StateToSave(prefix), options);
    }

    /// <summary>
    /// <see cref="Save"/> with only a copy on the calling thread: the shadows are copied into a staging buffer laid out
    /// like the shadow arena (a few large copies, one per group), then the write, fsync and folder swap run on a
    /// background task while training and updates go on. The checkpoint holds the state at the call. The staging buffer
    /// (one more EMA-sized allocation per profile) is kept for the next call, because a fresh allocation's page faults
    /// cost more than the copy; a call made while the previous write still runs first waits for it. The task carries
    /// any failure, and a failed write leaves the previous checkpoint in place.
    /// </summary>
    public Task SaveAsync(string directory, string prefix = EmaCheckpoint.DefaultPrefix, DcpWriteOptions? options = null)
    {
        ThrowIfDisposed();
        ThrowIfSwapped();
        return _saves.Start(_arenas, staged =>
            TensorChunks.OneRank(directory, StateToSave(prefix, (profile, name) => staged[profile][_trackedIndex[name]]!), options));
    }

    /// <summary>This manager's asynchronous saves: <see cref="SaveAsync"/> and the post-hoc snapshots taken from it.</summary>
    internal AsyncSave Saves => _saves;

    private IEnumerable<KeyValuePair<string, object?>> StateToSave(string prefix) => StateToSave(prefix, ShadowOf);

    private IEnumerable<KeyValuePair<string, object?>> StateToSave(string prefix, Func<int, string, torch.Tensor> shadowOf)
    {
        if (!_namedProfiles)
        {
            return EmaCheckpoint.ProfileState(prefix, TrackedNames, name => shadowOf(0, name), StoredStateOf(_profiles[0]));
        }
        var state = EmaCheckpoint.ManagerState(prefix, Step, _profiles.Select(p => p.Name));
        foreach (var profile in _profiles)
        {
            var k = profile.Index;
            state = state.Concat(EmaCheckpoint.ProfileState(ProfilePrefix(prefix, profile), TrackedNames, name => shadowOf(k, name), StoredStateOf(profile)));
        }
        return state;
    }

    private EmaCheckpoint.StoredState StoredStateOf(EmaProfile<TModel> profile) =>
        new(Step, Decay, profile.CurrentDecay, profile.Schedule.Describe());

    private string ProfilePrefix(string prefix, EmaProfile<TModel> profile) => _namedProfiles ? prefix + profile.Name + "." : prefix;

    /// <summary>
    /// Loads shadows and step written by <see cref="Save"/> (or any DCP folder with the same keys). Everything is read and
    /// checked first, with <see cref="LoadStateDict(IReadOnlyDictionary{string, torch.Tensor}, bool)"/>'s rules, for every profile; a failed load changes nothing.
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

        // Names, dtypes, shapes, schedules and steps are checked from the metadata and the small values first: a
        // checkpoint that cannot fit is refused before a byte of tensor data is read or allocated.
        var reads = new List<(EmaProfile<TModel> Profile, List<string> Names)>();
        foreach (var profile in toLoad)
        {
            var entries = EmaCheckpoint.TensorEntries(reader, ProfilePrefix(prefix, profile));
            CheckFits(entries.Select(e => (e.Name, TorchDTypes.TryGet(e.Entry.DType, out var t, out _) ? t : (torch.ScalarType?)null, e.Entry.Size)),
                strict, nameof(directory));
            reads.Add((profile, entries.Select(e => e.Name).Where(_trackedIndex.ContainsKey).ToList()));
        }
        var states = new List<EmaCheckpoint.StoredState?>();
        long? step = EmaCheckpoint.ReadProfileStates(reader, directory,
            toLoad.Select(p => (ProfilePrefix(prefix, p), p.Name, p.Schedule)), named: stored is not null, allowScheduleMismatch, states);

        var loaded = new List<Dictionary<string, torch.Tensor>>();
        try
        {
            var plans = new List<List<(torch.Tensor Target, torch.Tensor Source)>>();
            foreach (var (profile, names) in reads)
            {
                var tensors = EmaCheckpoint.ReadTensors(reader, ProfilePrefix(prefix, profile), names);
                loaded.Add(tensors);
                plans.Add(PlanLoad(profile.Index, tensors, strict));
            }
            foreach (var plan in plans) Commit(plan);
            Step = step ?? Step;
            for (int i = 0; i < toLoad.Count; i++)
            {
                if (states[i] is { } state && !double.IsNaN(state.CurrentDecay)) toLoad[i].SetCurrentDecay(state.CurrentDecay);
            }
        }
        finally
        {
            foreach (var tensors in loaded)
            {
                foreach (var t in tensors.Values) t.Dispose();
            }
        }
    }

    // Which of this manager's profiles a checkpoint with profiles `stored` (null: a single-profile checkpoint) can fill.
    private List<EmaProfile<TModel>> ProfilesToLoad(string directory, string prefix, IReadOnlyList<string>? stored, bool strict)
    {
        if (!_namedProfiles)
        {
            if (stored is not null)
            {
                throw new ArgumentException(
                    $"{directory}: the checkpoint holds EMA profiles {string.Join(", ", stored)} under '{prefix}'; build the manager with EmaOptions.Profiles, or load one profile with prefix '{prefix}{stored[0]}.'.");
            }
            return [_profiles[0]];
        }
        if (stored is null)
        {
            throw new ArgumentException(
                $"{directory}: the checkpoint holds a single-profile EMA under '{prefix}' (no '{CheckpointKeys.Of(prefix, CheckpointKeys.Profiles)}'), this manager has profiles {string.Join(", ", _profiles.Select(p => p.Name))}; load it into one profile with LoadStateDict or a single-profile manager.");
        }
        var present = _profiles.Where(p => stored.Contains(p.Name)).ToList();
        var missing = _profiles.Where(p => !stored.Contains(p.Name)).Select(p => p.Name).ToList();
        var extra = stored.Where(n => _profiles.All(p => p.Name != n)).ToList();
        if ((strict && (missing.Count > 0 || extra.Count > 0)) || present.Count == 0)
        {
            throw new ArgumentException(
                $"{directory}: the checkpoint's EMA profiles ({string.Join(", ", stored)}) do not match this manager's ({string.Join(", ", _profiles.Select(p => p.Name))}).");
        }
        return present;
    }
}

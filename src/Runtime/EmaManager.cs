using System;
using System.Collections.Generic;
using System.Linq;
using TorchSharp;
using EmaGen.Dcp;

namespace EmaGen;

/// <summary>
/// Keeps an exponential moving average of a tracked model's trainable parameters:
/// <c>ema = decay * ema + (1 - decay) * param</c> after every optimizer step. Shadows live on the parameters' device,
/// in one contiguous buffer per (device, shadow dtype, parameter dtype) group; bf16/fp16 parameters get fp32 shadows
/// unless <see cref="EmaOptions.LowPrecisionShadow"/>. The typed shadow tree is the generated extension property
/// <c>Shadow</c> (for example <c>ema.Shadow.fc1.weight</c>).
/// With <see cref="EmaOptions.Profiles"/> the manager keeps several shadow sets with their own schedules, written in one
/// pass over the parameters; <see cref="Profiles"/> gives each one's typed shadow, export and swap, and the manager's own
/// shadow members act on the first profile.
/// </summary>
/// <typeparam name="TModel">An <see cref="EmaTrackedAttribute"/> module class.</typeparam>
public sealed class EmaManager<TModel> : IDisposable where TModel : torch.nn.Module, IEmaTracked<TModel>
{
    private const int NamesShownInErrors = 5;

    private readonly EmaParameterInfo[] _all;
    private readonly ParameterSlot[] _slots;
    private readonly long[] _slotNumel;
    private readonly int[] _parameterOfSlot;
    private readonly Dictionary<string, int> _trackedIndex;
    private readonly ShadowArena[] _arenas;
    private readonly EmaProfile<TModel>[] _profiles;
    private readonly bool _namedProfiles;
    private readonly UpdateEngine _engine;
    private readonly object[] _shadowRoots;
    private EmaWeightSwap? _activeSwap;
    private bool _disposed;

    /// <summary>Binds to <paramref name="model"/> with a constant <paramref name="decay"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="decay"/> is outside [0, 1].</exception>
    public EmaManager(TModel model, double decay = EmaOptions.DefaultDecay)
        : this(model, new EmaOptions { Decay = decay })
    {
    }

    /// <summary>Binds to <paramref name="model"/>: records its parameters and copies the trainable ones into fresh shadows.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The decay or thread count is out of range.</exception>
    public EmaManager(TModel model, EmaOptions options)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        Decay = options.Decay;
        Options = options;
        _namedProfiles = options.Profiles is not null;
        var profileOptions = options.Profiles ?? [new EmaProfileOptions("", options.EffectiveSchedule)];
        _profiles = new EmaProfile<TModel>[profileOptions.Count];
        for (int k = 0; k < _profiles.Length; k++)
        {
            _profiles[k] = new EmaProfile<TModel>(this, k, profileOptions[k].Name, profileOptions[k].Schedule);
        }

        var collector = new SlotCollector();
        TModel.VisitParameters(model, ref collector);
        _slots = collector.Slots.ToArray();
        _slotNumel = new long[_slots.Length];
        _parameterOfSlot = new int[_slots.Length];

        var all = new List<EmaParameterInfo>();
        var sources = new List<torch.Tensor>();
        for (int s = 0; s < _slots.Length; s++)
        {
            var slot = _slots[s];
            _parameterOfSlot[s] = -1;
            _slotNumel[s] = -1;
            if (slot.Tensor is not { } t) continue;
            var exclusion = slot.Ignored ? EmaExclusion.Ignored
                : slot.IsBuffer ? (options.TrackBuffers ? EmaExclusion.None : EmaExclusion.BufferNotTracked)
                : t.requires_grad ? EmaExclusion.None : EmaExclusion.Frozen;
            var dtype = t.dtype;
            var shadowDType = KernelKinds.IsFloatingPoint(dtype) ? KernelKinds.ShadowDTypeFor(dtype, options.LowPrecisionShadow) : dtype;
            _parameterOfSlot[s] = all.Count;
            all.Add(new EmaParameterInfo(slot.FullName, t.shape, dtype, shadowDType, t.device, exclusion, slot.IsBuffer, slot.ShardDim));
            _slotNumel[s] = all[^1].Numel;
            sources.Add(t);
        }
        _all = all.ToArray();
        Parameters = _all.Where(p => !p.IsBuffer).ToArray();
        Buffers = _all.Where(p => p.IsBuffer).ToArray();

        _trackedIndex = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < _all.Length; i++)
        {
            if (_all[i].Tracked && !_trackedIndex.TryAdd(_all[i].Name, i))
            {
                throw new InvalidOperationException($"The model registers the name '{_all[i].Name}' twice.");
            }
        }
        TrackedNames = _all.Where(p => p.Tracked).Select(p => p.Name).ToArray();

        _arenas = new ShadowArena[_profiles.Length];
        try
        {
            // Only the first arena packs: the parameters can alias one flat buffer, which every profile then reads.
            for (int k = 0; k < _arenas.Length; k++) _arenas[k] = new ShadowArena(_all, sources, options.PackParameters && k == 0);
            _engine = new UpdateEngine(_slots, _slotNumel, _parameterOfSlot, _all, _arenas, options.EffectiveThreads);
            _shadowRoots = new object[_profiles.Length];
            for (int k = 0; k < _profiles.Length; k++) _shadowRoots[k] = BuildShadow(model, _arenas[k]);
        }
        catch
        {
            _engine?.Dispose();
            foreach (var arena in _arenas) arena?.Dispose();
            throw;
        }
    }

    /// <summary>The configured constant decay (<see cref="EmaOptions.Decay"/>); with a schedule, see <see cref="CurrentDecay"/>.</summary>
    public double Decay { get; }

    /// <summary>The decay schedule (a constant one when <see cref="EmaOptions.Schedule"/> is not set); of the first profile when there are several.</summary>
    public EmaSchedule Schedule => _profiles[0].Schedule;

    /// <summary>The decay the last update applied (NaN before the first), kept apart from any configured maximum; of the first profile when there are several.</summary>
    public double CurrentDecay => _profiles[0].CurrentDecay;

    /// <summary>The profiles, in <see cref="EmaOptions.Profiles"/> order (one unnamed profile when that is not set).</summary>
    public IReadOnlyList<EmaProfile<TModel>> Profiles => _profiles;

    /// <summary>The profile named <paramref name="name"/>.</summary>
    /// <exception cref="KeyNotFoundException">No profile has that name.</exception>
    public EmaProfile<TModel> Profile(string name)
    {
        foreach (var profile in _profiles)
        {
            if (profile.Name == name) return profile;
        }
        throw new KeyNotFoundException($"No EMA profile is named '{name}'; the profiles are {string.Join(", ", _profiles.Select(p => $"'{p.Name}'"))}.");
    }

    /// <summary>The options this manager was built with.</summary>
    public EmaOptions Options { get; }

    /// <summary>Number of tensors with a shadow (parameters, and buffers when <see cref="EmaOptions.TrackBuffers"/>).</summary>
    public int Count => _trackedIndex.Count;

    /// <summary>Names of the tensors with a shadow, in visit order (parameters in <c>named_parameters()</c> order, buffers in <c>named_buffers()</c> order).</summary>
    public IReadOnlyList<string> TrackedNames { get; }

    /// <summary>Every parameter of the model (averaged or not), in <c>named_parameters()</c> order.</summary>
    public IReadOnlyList<EmaParameterInfo> Parameters { get; }

    /// <summary>Every buffer of the model EmaGen can see (tracked or not), in <c>named_buffers()</c> order.</summary>
    public IReadOnlyList<EmaParameterInfo> Buffers { get; }

    /// <summary>True when <paramref name="name"/> has a shadow.</summary>
    public bool Contains(string name) => _trackedIndex.ContainsKey(name);

    /// <summary>Bytes of shadow storage held by this manager (all profiles).</summary>
    public long ShadowBytes => _arenas.Sum(a => a.Bytes);

    /// <summary>Threads a CPU update uses (1 for small models).</summary>
    public int UpdateThreads => _engine.Threads;

    /// <summary>The shadow tensor of parameter <paramref name="name"/> (a view the manager owns; first profile).</summary>
    /// <exception cref="KeyNotFoundException">No averaged parameter has that name.</exception>
    public torch.Tensor this[string name] => ShadowOf(0, name);

    /// <summary>The typed shadow tree as the generated class <typeparamref name="TShadow"/> (usually reached through the generated <c>Shadow</c> property; first profile).</summary>
    public TShadow GetShadow<TShadow>() where TShadow : class => GetShadow<TShadow>(0);

    internal torch.Tensor ShadowOf(int profile, string name)
    {
        ThrowIfDisposed();
        if (!_trackedIndex.TryGetValue(name, out int i))
        {
            throw new KeyNotFoundException($"'{name}' is not an averaged parameter of {typeof(TModel).Name}.");
        }
        return _arenas[profile][i]!;
    }

    internal TShadow GetShadow<TShadow>(int profile) where TShadow : class
    {
        ThrowIfDisposed();
        var root = _shadowRoots[profile];
        return root as TShadow ?? throw new InvalidCastException(
            $"The shadow of {typeof(TModel).FullName} is {root.GetType().FullName}, not {typeof(TShadow).FullName}.");
    }

    /// <summary>
    /// Applies <c>ema = decay * ema + (1 - decay) * param</c> to every averaged parameter, in place, recording no
    /// gradients, for every profile whose schedule updates at this step (one pass over the parameters for all of them).
    /// The model is first checked against the layout seen at construction; a mismatch throws before any shadow is
    /// written. On the CPU this allocates no managed memory and creates no tensors.
    /// </summary>
    public void Update(TModel model)
    {
        ArgumentNullException.ThrowIfNull(model);
        ThrowIfDisposed();
        ThrowIfSwapped();
        long step = Step + 1;
        bool any = false;
        foreach (var profile in _profiles)
        {
            bool active = profile.Schedule.UpdatesAt(step);
            _engine.SetProfile(profile.Index, active, active ? profile.Schedule.DecayAt(step) : double.NaN);
            any |= active;
        }
        if (any)
        {
            Gather(model);
            _engine.Apply();
            foreach (var profile in _profiles)
            {
                if (profile.Schedule.UpdatesAt(step)) profile.CurrentDecay = profile.Schedule.DecayAt(step);
            }
        }
        Step = step;
    }

    /// <summary>Number of updates applied (restored by <see cref="Load"/>).</summary>
    public long Step { get; private set; }

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

    private IEnumerable<KeyValuePair<string, object?>> StateToSave(string prefix)
    {
        if (!_namedProfiles)
        {
            return EmaCheckpoint.ProfileState(prefix, TrackedNames, name => ShadowOf(0, name), Step, Decay, Schedule.Describe());
        }
        var state = EmaCheckpoint.ManagerState(prefix, Step, _profiles.Select(p => p.Name));
        foreach (var profile in _profiles)
        {
            var k = profile.Index;
            state = state.Concat(EmaCheckpoint.ProfileState(ProfilePrefix(prefix, profile), TrackedNames, name => ShadowOf(k, name),
                Step, profile.CurrentDecay, profile.Schedule.Describe()));
        }
        return state;
    }

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
        var loaded = new List<(EmaProfile<TModel> Profile, EmaCheckpoint.Loaded State)>();
        try
        {
            foreach (var profile in toLoad)
            {
                loaded.Add((profile, EmaCheckpoint.Read(reader, directory, ProfilePrefix(prefix, profile), strict ? null : _trackedIndex.Keys)));
            }
            var plans = new List<List<(torch.Tensor Target, torch.Tensor Source)>>();
            long? step = null;
            foreach (var (profile, state) in loaded)
            {
                if (state.Schedule is { } schedule && schedule != profile.Schedule.Describe() && !allowScheduleMismatch)
                {
                    throw new ArgumentException(
                        $"{directory}: the checkpoint was written with schedule {schedule}{ProfileText(profile)}, this manager uses {profile.Schedule.Describe()} (pass allowScheduleMismatch to load anyway).");
                }
                if (step is { } s && state.Step is { } t && s != t)
                {
                    throw new ArgumentException($"{directory}: the profiles were saved at different steps ({s} and {t}).");
                }
                step ??= state.Step;
                plans.Add(PlanLoad(profile.Index, state.Tensors, strict));
            }
            foreach (var plan in plans) Commit(plan);
            Step = step ?? Step;
        }
        finally
        {
            foreach (var (_, state) in loaded)
            {
                foreach (var t in state.Tensors.Values) t.Dispose();
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
                $"{directory}: the checkpoint holds a single-profile EMA under '{prefix}' (no '{prefix}_emagen.profiles'), this manager has profiles {string.Join(", ", _profiles.Select(p => p.Name))}; load it into one profile with LoadStateDict or a single-profile manager.");
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

    private static string ProfileText(EmaProfile<TModel> profile) => profile.Name.Length == 0 ? "" : $" for profile '{profile.Name}'";

    /// <summary>
    /// Copies the averaged weights into <paramref name="model"/> (the trained model itself, or a second instance of the
    /// same class, e.g. for evaluation or export). Parameters without a shadow are left as they are.
    /// </summary>
    public void CopyTo(TModel model) => CopyTo(0, model);

    internal void CopyTo(int profile, TModel model)
    {
        ArgumentNullException.ThrowIfNull(model);
        ThrowIfDisposed();
        ThrowIfSwapped();
        using var _ = torch.no_grad();
        foreach (var (target, shadow) in ShadowPairs(model, profile))
        {
            InPlace.Release(target.copy_(shadow), target);
        }
    }

    /// <summary>
    /// Puts the EMA weights into <paramref name="model"/> until the returned object is disposed, then restores the
    /// model's weights bit for bit (also on exceptions): <c>using (ema.SwapInto(model)) { Evaluate(model); }</c>.
    /// While a swap is active, <see cref="Update"/>, saving and loading throw.
    /// </summary>
    public EmaWeightSwap SwapInto(TModel model) => SwapInto(0, model);

    internal EmaWeightSwap SwapInto(int profile, TModel model)
    {
        ArgumentNullException.ThrowIfNull(model);
        ThrowIfDisposed();
        ThrowIfSwapped();
        _activeSwap = new EmaWeightSwap(ShadowPairs(model, profile), () => _activeSwap = null);
        return _activeSwap;
    }

    /// <summary>Caller-owned copies of every shadow (first profile), keyed by parameter name, in <c>named_parameters()</c> order.</summary>
    public Dictionary<string, torch.Tensor> StateDict() => StateDict(0);

    internal Dictionary<string, torch.Tensor> StateDict(int profile)
    {
        ThrowIfDisposed();
        ThrowIfSwapped();
        using var _ = torch.no_grad();
        var state = new Dictionary<string, torch.Tensor>(_trackedIndex.Count, StringComparer.Ordinal);
        foreach (var name in TrackedNames)
        {
            state.Add(name, _arenas[profile][_trackedIndex[name]]!.clone());
        }
        return state;
    }

    /// <summary>
    /// Copies <paramref name="state"/> into the shadows (first profile). Every entry is checked before anything is
    /// written, so a rejected load leaves every shadow unchanged.
    /// </summary>
    /// <param name="state">Tensors keyed by parameter name; values are copied, the caller keeps ownership.</param>
    /// <param name="strict">When true, <paramref name="state"/> must name exactly the averaged parameters.</param>
    /// <exception cref="ArgumentException">Missing or unexpected names (strict), or a shape or dtype mismatch, or a null tensor.</exception>
    public void LoadStateDict(IReadOnlyDictionary<string, torch.Tensor> state, bool strict = true) => LoadStateDict(0, state, strict);

    internal void LoadStateDict(int profile, IReadOnlyDictionary<string, torch.Tensor> state, bool strict)
    {
        ArgumentNullException.ThrowIfNull(state);
        ThrowIfDisposed();
        ThrowIfSwapped();
        Commit(PlanLoad(profile, state, strict));
    }

    // Checks every entry of `state` against profile `profile`'s shadows; returns the copies to make, or throws having written nothing.
    private List<(torch.Tensor Target, torch.Tensor Source)> PlanLoad(int profile, IReadOnlyDictionary<string, torch.Tensor> state, bool strict)
    {

        if (strict)
        {
            var missing = TrackedNames.Where(n => !state.ContainsKey(n)).Order(StringComparer.Ordinal).ToList();
            var unexpected = state.Keys.Where(n => !_trackedIndex.ContainsKey(n)).Order(StringComparer.Ordinal).ToList();
            if (missing.Count > 0 || unexpected.Count > 0)
            {
                var parts = new List<string>();
                if (missing.Count > 0) parts.Add($"{missing.Count} missing ({Sample(missing)})");
                if (unexpected.Count > 0) parts.Add($"{unexpected.Count} unexpected ({Sample(unexpected)})");
                throw new ArgumentException(
                    $"EMA state dict does not match {typeof(TModel).Name}: {string.Join("; ", parts)}.", nameof(state));
            }
        }

        var plan = new List<(torch.Tensor Target, torch.Tensor Source)>();
        var problems = new List<string>();
        foreach (var (name, tensor) in state.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            if (!_trackedIndex.TryGetValue(name, out int i)) continue;
            var info = _all[i];
            if (tensor is null)
            {
                problems.Add($"'{name}': value is null");
                continue;
            }
            if (tensor.dtype != info.ShadowDType)
            {
                problems.Add($"'{name}': dtype {tensor.dtype}, expected {info.ShadowDType}");
            }
            if (!tensor.shape.AsSpan().SequenceEqual(info.Shape))
            {
                problems.Add($"'{name}': shape [{string.Join(", ", tensor.shape)}], expected {info.ShapeText}");
            }
            plan.Add((_arenas[profile][i]!, tensor));
        }
        if (problems.Count > 0)
        {
            throw new ArgumentException(
                $"EMA state dict does not fit {typeof(TModel).Name}: {problems.Count} mismatch(es): {Sample(problems, "; ")}.", nameof(state));
        }
        return plan;
    }

    private static void Commit(List<(torch.Tensor Target, torch.Tensor Source)> plan)
    {
        using var _ = torch.no_grad();
        foreach (var (target, source) in plan)
        {
            InPlace.Release(target.copy_(source), target);
        }
    }

    /// <summary>Releases the shadow storage and the update threads.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _engine.Dispose();
        foreach (var arena in _arenas) arena.Dispose();
    }

    // Each averaged tensor of the model with its shadow, after the model's slots passed the layout check.
    private List<(torch.Tensor Target, torch.Tensor Shadow)> ShadowPairs(TModel model, int profile)
    {
        Gather(model);
        var collector = new ShadowPairCollector(_parameterOfSlot, _arenas[profile]);
        TModel.VisitParameters(model, ref collector);
        return collector.Pairs;
    }

    // Checks every slot of the model against the recorded layout before anything is written.
    private void Gather(TModel model)
    {
        _engine.BeginGather();
        var gather = new GatherVisitor(_engine);
        TModel.VisitParameters(model, ref gather);
        _engine.EndGather();
    }

    private object BuildShadow(TModel model, ShadowArena arena)
    {
        var entries = new List<EmaShadowEntry>();
        var localNames = new List<string>();
        for (int s = 0; s < _slots.Length; s++)
        {
            var slot = _slots[s];
            if (slot.Ignored) continue;
            int p = _parameterOfSlot[s];
            string reason = p < 0 ? "the model holds no such tensor (null)" : _all[p].Exclusion switch
            {
                EmaExclusion.Frozen => "it was frozen (requires_grad false) when the EMA manager was built",
                EmaExclusion.BufferNotTracked => "buffers are not tracked (set EmaOptions.TrackBuffers)",
                _ => "",
            };
            entries.Add(new EmaShadowEntry(slot.FullName, p >= 0 ? arena[p] : null, reason));
            localNames.Add(slot.LocalName);
        }
        var builder = new EmaShadowBuilder(entries, localNames);
        var root = TModel.CreateShadow(model, builder);
        builder.EnsureComplete();
        return root;
    }

    private static string Sample(IReadOnlyList<string> items, string separator = ", ")
    {
        var shown = string.Join(separator, items.Take(NamesShownInErrors));
        return items.Count > NamesShownInErrors ? $"{shown}{separator}... and {items.Count - NamesShownInErrors} more" : shown;
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

    // While swapped, the shadow storage holds the model's own weights.
    private void ThrowIfSwapped()
    {
        if (_activeSwap is not null)
        {
            throw new InvalidOperationException("The EMA weights are swapped into a model; dispose the swap before updating, saving or loading.");
        }
    }
}

using System;
using EmaGen.Dcp;
using System.Collections.Generic;
using System.Linq;
using TorchSharp;

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
public sealed partial class EmaManager<TModel> : IDisposable where TModel : torch.nn.Module, IEmaTracked<TModel>
{
    private const int NamesShownInErrors = 5;

    private readonly EmaParameterInfo[] _all;
    private readonly ParameterSlot[] _slots;
    private readonly int[] _parameterOfSlot;
    private readonly Dictionary<string, int> _trackedIndex;
    private readonly ShadowArena[] _arenas;
    private readonly EmaProfile<TModel>[] _profiles;
    private readonly bool _namedProfiles;
    private readonly UpdateEngine _engine;
    private readonly object[] _shadowRoots;
    private EmaWeightSwap? _activeSwap;
    private readonly AsyncSave _saves = new();
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
        _parameterOfSlot = new int[_slots.Length];

        var all = new List<EmaParameterInfo>();
        var sources = new List<torch.Tensor>();
        for (int s = 0; s < _slots.Length; s++)
        {
            var slot = _slots[s];
            _parameterOfSlot[s] = -1;
            if (slot.Tensor is not { } t) continue;
            var exclusion = EmaExclusions.Of(slot, options.TrackBuffers);
            var dtype = t.dtype;
            var shadowDType = DTypes.IsFloatingPoint(dtype) ? DTypes.ShadowDTypeFor(dtype, options.LowPrecisionShadow) : dtype;
            _parameterOfSlot[s] = all.Count;
            all.Add(new EmaParameterInfo(slot.FullName, t.shape, dtype, shadowDType, t.device, exclusion, slot.IsBuffer, slot.ShardDim));
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
            for (int k = 0; k < _arenas.Length; k++) _arenas[k] = new ShadowArena(_all, sources, (options.PackParameters ?? true) && k == 0);
            _engine = new UpdateEngine(_slots, _parameterOfSlot, _all, _arenas, options.EffectiveThreads, options.OnSlowPath, options.ForceTorchOps);
            _shadowRoots = new object[_profiles.Length];
            for (int k = 0; k < _profiles.Length; k++) _shadowRoots[k] = BuildShadow(model, _arenas[k], collector.Groups);
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

    /// <summary>
    /// How updates run, for a user checking that the fast path is taken: how many (device, dtype) groups are packed
    /// into one flat buffer and still intact at the last update, how many tensors went one by one, and why a group is
    /// not packed or fell back (see <see cref="EmaOptions.PackParameters"/>).
    /// </summary>
    public string UpdatePath => _engine.DescribePath();

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
                // The decay was computed above; an UpdateEvery schedule's is a product over its interval.
                if (profile.Schedule.UpdatesAt(step)) profile.SetCurrentDecay(_engine.DecayOf(profile.Index));
            }
        }
        Step = step;
    }

    /// <summary>Number of updates applied (restored by <see cref="Load"/>).</summary>
    public long Step { get; private set; }

    /// <summary>Releases the shadow storage and the update threads.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _saves.Dispose();
        _engine.Dispose();
        foreach (var arena in _arenas) arena.Dispose();
    }

    // Each averaged tensor of the model with its shadow, after the model's slots passed the layout check.
    private List<(torch.Tensor Target, torch.Tensor Shadow)> ShadowPairs(TModel model, int profile)
    {
        // Dynamic submodules are read afresh here, so a parameter re-pointed inside one is followed (or reported).
        _engine.RefreshDynamic();
        Gather(model);
        var collector = new ShadowPairCollector(_parameterOfSlot, _arenas[profile]);
        TModel.VisitParameters(model, ref collector);
        return collector.Pairs;
    }

    // Checks every slot of the model against the recorded layout before anything is written.
    private void Gather(TModel model)
    {
        _engine.Check(model);
    }

    private object BuildShadow(TModel model, ShadowArena arena, IReadOnlyList<DynamicGroup> groups) =>
        TypedShadowTree.Build(model, _slots, groups, s =>
        {
            int p = _parameterOfSlot[s];
            return p < 0 ? (null, EmaExclusions.Describe(null)) : (arena[p], EmaExclusions.Describe(_all[p].Exclusion));
        });

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

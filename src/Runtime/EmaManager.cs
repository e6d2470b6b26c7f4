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
    private readonly ShadowArena _arena;
    private readonly UpdateEngine _engine;
    private readonly object _shadowRoot;
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
        Schedule = options.EffectiveSchedule;

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

        _arena = new ShadowArena(_all, sources, options.PackParameters);
        try
        {
            _engine = new UpdateEngine(_slots, _slotNumel, _parameterOfSlot, _all, _arena, Decay, options.EffectiveThreads);
            _shadowRoot = BuildShadow(model);
        }
        catch
        {
            _engine?.Dispose();
            _arena.Dispose();
            throw;
        }
    }

    /// <summary>The configured constant decay (<see cref="EmaOptions.Decay"/>); with a schedule, see <see cref="CurrentDecay"/>.</summary>
    public double Decay { get; }

    /// <summary>The decay schedule (a constant one when <see cref="EmaOptions.Schedule"/> is not set).</summary>
    public EmaSchedule Schedule { get; }

    /// <summary>The decay the last update applied (NaN before the first), kept apart from any configured maximum.</summary>
    public double CurrentDecay { get; private set; } = double.NaN;

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

    /// <summary>Bytes of shadow storage held by this manager.</summary>
    public long ShadowBytes => _arena.Bytes;

    /// <summary>Threads a CPU update uses (1 for small models).</summary>
    public int UpdateThreads => _engine.Threads;

    /// <summary>The shadow tensor of parameter <paramref name="name"/> (a view the manager owns).</summary>
    /// <exception cref="KeyNotFoundException">No averaged parameter has that name.</exception>
    public torch.Tensor this[string name]
    {
        get
        {
            ThrowIfDisposed();
            if (!_trackedIndex.TryGetValue(name, out int i))
            {
                throw new KeyNotFoundException($"'{name}' is not an averaged parameter of {typeof(TModel).Name}.");
            }
            return _arena[i]!;
        }
    }

    /// <summary>The typed shadow tree as the generated class <typeparamref name="TShadow"/> (usually reached through the generated <c>Shadow</c> property).</summary>
    public TShadow GetShadow<TShadow>() where TShadow : class
    {
        ThrowIfDisposed();
        return _shadowRoot as TShadow ?? throw new InvalidCastException(
            $"The shadow of {typeof(TModel).FullName} is {_shadowRoot.GetType().FullName}, not {typeof(TShadow).FullName}.");
    }

    /// <summary>
    /// Applies <c>ema = decay * ema + (1 - decay) * param</c> to every averaged parameter, in place, recording no
    /// gradients. The model is first checked against the layout seen at construction; a mismatch throws before any
    /// shadow is written. On the CPU this allocates no managed memory and creates no tensors.
    /// </summary>
    public void Update(TModel model)
    {
        ArgumentNullException.ThrowIfNull(model);
        ThrowIfDisposed();
        ThrowIfSwapped();
        long step = Step + 1;
        if (!Schedule.UpdatesAt(step))
        {
            Step = step;
            return;
        }
        double decay = Schedule.DecayAt(step);
        Gather(model);
        _engine.Decay = decay;
        _engine.Apply();
        CurrentDecay = decay;
        Step = step;
    }

    /// <summary>Number of updates applied (restored by <see cref="Load"/>).</summary>
    public long Step { get; private set; }

    /// <summary>
    /// Writes the shadows as a PyTorch Distributed Checkpoint folder: each shadow under <c>{prefix}{name}</c> (one full
    /// chunk), plus the manager's own state as values under <c>{prefix}_emagen.step</c>, <c>.decay</c> and
    /// <c>.format</c>. The folder replaces a previous checkpoint at <paramref name="directory"/> only once complete.
    /// </summary>
    /// <param name="directory">The checkpoint folder (created or replaced).</param>
    /// <param name="prefix">Key prefix, so the EMA can share a key space with model and optimizer state (PyTorch style: <c>"ema."</c>).</param>
    /// <param name="options">Writer options (naming for older PyTorch, files per rank).</param>
    public void Save(string directory, string prefix = EmaCheckpoint.DefaultPrefix, DcpWriteOptions? options = null)
    {
        ThrowIfDisposed();
        ThrowIfSwapped();
        DcpWriter.Save(directory, EmaCheckpoint.StateToSave(prefix, TrackedNames, this, Step, Decay, Schedule.Describe()), options);
    }

    /// <summary>
    /// Loads shadows and step written by <see cref="Save"/> (or any DCP folder with the same keys). Everything is read and
    /// checked first, with <see cref="LoadStateDict"/>'s rules; a failed load changes nothing.
    /// </summary>
    /// <param name="directory">The checkpoint folder.</param>
    /// <param name="strict">When true, the checkpoint must hold exactly the averaged names under <paramref name="prefix"/>.</param>
    /// <param name="prefix">Key prefix used when saving.</param>
    /// <param name="allowScheduleMismatch">Load even when the checkpoint was written with another decay schedule.</param>
    /// <exception cref="CheckpointFormatException">The folder is not a readable checkpoint.</exception>
    /// <exception cref="ArgumentException">Names, shapes or dtypes do not fit, or the decay differs.</exception>
    public void Load(string directory, bool strict = true, string prefix = EmaCheckpoint.DefaultPrefix, bool allowScheduleMismatch = false)
    {
        ThrowIfDisposed();
        var loaded = EmaCheckpoint.Read(directory, prefix, strict ? null : _trackedIndex.Keys);
        try
        {
            if (loaded.Schedule is { } schedule && schedule != Schedule.Describe() && !allowScheduleMismatch)
            {
                throw new ArgumentException(
                    $"{directory}: the checkpoint was written with schedule {schedule}, this manager uses {Schedule.Describe()} (pass allowScheduleMismatch to load anyway).");
            }
            LoadStateDict(loaded.Tensors, strict);
            Step = loaded.Step ?? Step;
        }
        finally
        {
            foreach (var t in loaded.Tensors.Values) t.Dispose();
        }
    }

    /// <summary>
    /// Copies the averaged weights into <paramref name="model"/> (the trained model itself, or a second instance of the
    /// same class, e.g. for evaluation or export). Parameters without a shadow are left as they are.
    /// </summary>
    public void CopyTo(TModel model)
    {
        ArgumentNullException.ThrowIfNull(model);
        ThrowIfDisposed();
        ThrowIfSwapped();
        using var _ = torch.no_grad();
        foreach (var (target, shadow) in ShadowPairs(model))
        {
            InPlace.Release(target.copy_(shadow), target);
        }
    }

    /// <summary>
    /// Puts the EMA weights into <paramref name="model"/> until the returned object is disposed, then restores the
    /// model's weights bit for bit (also on exceptions): <c>using (ema.SwapInto(model)) { Evaluate(model); }</c>.
    /// While a swap is active, <see cref="Update"/>, saving and loading throw.
    /// </summary>
    public EmaWeightSwap SwapInto(TModel model)
    {
        ArgumentNullException.ThrowIfNull(model);
        ThrowIfDisposed();
        ThrowIfSwapped();
        _activeSwap = new EmaWeightSwap(ShadowPairs(model), () => _activeSwap = null);
        return _activeSwap;
    }

    /// <summary>Caller-owned copies of every shadow, keyed by parameter name, in <c>named_parameters()</c> order.</summary>
    public Dictionary<string, torch.Tensor> StateDict()
    {
        ThrowIfDisposed();
        ThrowIfSwapped();
        using var _ = torch.no_grad();
        var state = new Dictionary<string, torch.Tensor>(_trackedIndex.Count, StringComparer.Ordinal);
        foreach (var name in TrackedNames)
        {
            state.Add(name, _arena[_trackedIndex[name]]!.clone());
        }
        return state;
    }

    /// <summary>
    /// Copies <paramref name="state"/> into the shadows. Every entry is checked before anything is written, so a
    /// rejected load leaves every shadow unchanged.
    /// </summary>
    /// <param name="state">Tensors keyed by parameter name; values are copied, the caller keeps ownership.</param>
    /// <param name="strict">When true, <paramref name="state"/> must name exactly the averaged parameters.</param>
    /// <exception cref="ArgumentException">Missing or unexpected names (strict), or a shape or dtype mismatch, or a null tensor.</exception>
    public void LoadStateDict(IReadOnlyDictionary<string, torch.Tensor> state, bool strict = true)
    {
        ArgumentNullException.ThrowIfNull(state);
        ThrowIfDisposed();
        ThrowIfSwapped();

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
            plan.Add((_arena[i]!, tensor));
        }
        if (problems.Count > 0)
        {
            throw new ArgumentException(
                $"EMA state dict does not fit {typeof(TModel).Name}: {problems.Count} mismatch(es): {Sample(problems, "; ")}.", nameof(state));
        }

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
        _arena.Dispose();
    }

    // Each averaged tensor of the model with its shadow, after the model's slots passed the layout check.
    private List<(torch.Tensor Target, torch.Tensor Shadow)> ShadowPairs(TModel model)
    {
        Gather(model);
        var collector = new ShadowPairCollector(_parameterOfSlot, _arena);
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

    private object BuildShadow(TModel model)
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
            entries.Add(new EmaShadowEntry(slot.FullName, p >= 0 ? _arena[p] : null, reason));
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

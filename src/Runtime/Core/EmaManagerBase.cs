using System;
using System.Collections.Generic;
using System.Linq;
using EmaGen.Dcp;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// What both EMA managers are: a tracked model's averaged tensors bound once, one shadow set per profile, the update
/// pipeline, checkpoints and state dicts. <see cref="EmaManager{TModel}"/> is this with every tensor whole;
/// <see cref="ShardedEmaManager{TModel}"/> is this with this rank's box of each tensor. Everything that is not about
/// "whole versus shard" lives here once.
/// </summary>
/// <typeparam name="TModel">An <see cref="EmaTrackedAttribute"/> module class.</typeparam>
public abstract partial class EmaManagerBase<TModel> : IDisposable, IProfileHost where TModel : torch.nn.Module, IEmaTracked<TModel>
{
    private const int NamesShownInErrors = 5;

    private readonly ParameterSlot[] _slots;
    private readonly int[] _itemOfSlot;
    private readonly ShadowItem[] _items;
    private readonly Dictionary<string, int> _itemIndex;
    // Tied weights: each alias slot with the item of its owner (the first name of the tensor), and the alias names.
    private readonly (int Slot, int Item)[] _aliases;
    private readonly Dictionary<string, int> _aliasIndex;
    private readonly ShadowArena[] _arenas;
    private readonly EmaProfileBase[] _profiles;
    private readonly double[] _currentDecay;
    private readonly object[] _shadowRoots;
    private readonly SaveQueue _saves = new();
    // The name filters as checkpoints record them (null: none).
    private readonly string? _filters;
    private bool _disposed;

    private protected EmaManagerBase(TModel model, EmaOptions options, RankInfo placement, IReadOnlyDictionary<string, long[]>? globalShapes,
        bool canPack, Func<EmaManagerBase<TModel>, int, EmaProfileOptions, EmaProfileBase> newProfile)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        // A rank's boxes of whole parameters are not contiguous across parameters, so a sharded EMA never packs.
        if (options.PackParameters == true && !canPack) throw new NotSupportedException("A sharded EMA does not support PackParameters.");
        Options = options;
        Decay = options.Decay;
        Placement = placement;
        NamedProfiles = options.Profiles is not null;
        var profileOptions = options.Profiles ?? [new EmaProfileOptions("", options.EffectiveSchedule)];
        _profiles = new EmaProfileBase[profileOptions.Count];
        for (int k = 0; k < _profiles.Length; k++) _profiles[k] = newProfile(this, k, profileOptions[k]);
        _currentDecay = Enumerable.Repeat(double.NaN, _profiles.Length).ToArray();

        var collector = new SlotCollector();
        TModel.VisitParameters(model, ref collector);
        _slots = collector.Slots.ToArray();
        var owners = TiedSlots.OwnerOf(_slots);
        var aliases = new List<(int Slot, int Item)>();
        var parameters = new List<EmaParameterInfo>();
        var buffers = new List<EmaParameterInfo>();
        var items = new List<ShadowItem>();
        _itemOfSlot = new int[_slots.Length];
        var filter = NameFilter.Of(options);
        var exclusions = new EmaExclusion?[_slots.Length];
        for (int s = 0; s < _slots.Length; s++)
        {
            var slot = _slots[s];
            _itemOfSlot[s] = -1;
            if (slot.Tensor is not { } t) continue;
            if (owners[s] != s)
            {
                // Tied: named_parameters() lists the tensor once, under its first name; this name shares that one's shadow.
                _itemOfSlot[s] = _itemOfSlot[owners[s]];
                exclusions[s] = exclusions[owners[s]];
                if (_itemOfSlot[s] >= 0) aliases.Add((s, _itemOfSlot[s]));
                continue;
            }
            var exclusion = EmaExclusions.Of(slot, options.TrackBuffers, filter);
            exclusions[s] = exclusion;
            var shadowDType = DTypes.IsFloatingPoint(t.dtype) ? DTypes.ShadowDTypeFor(t.dtype, options.LowPrecisionShadow) : t.dtype;
            var info = new EmaParameterInfo(slot.FullName, GlobalShape(slot, t, exclusion, globalShapes), t.dtype, shadowDType, t.device, exclusion, slot.IsBuffer, slot.ShardDim);
            (slot.IsBuffer ? buffers : parameters).Add(info);
            if (!info.Tracked) continue;
            _itemOfSlot[s] = items.Count;
            items.Add(NewItem(s, info, t, globalShapes is not null));
        }
        filter?.ThrowIfUnused(parameters.Concat(options.TrackBuffers ? buffers : []).Select(p => p.Name).ToList());
        _filters = filter?.Describe();
        _items = items.ToArray();
        Parameters = parameters;
        Buffers = buffers;
        _itemIndex = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < _items.Length; i++)
        {
            if (!_itemIndex.TryAdd(_items[i].Info.Name, i)) throw new InvalidOperationException($"The model registers the name '{_items[i].Info.Name}' twice.");
        }
        TrackedNames = _items.Select(i => i.Info.Name).ToArray();
        _aliases = aliases.ToArray();
        _aliasIndex = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var (slot, item) in _aliases) _aliasIndex.Add(_slots[slot].FullName, item);
        TiedAliases = _aliases.ToDictionary(a => _slots[a.Slot].FullName, a => _items[a.Item].Info.Name, StringComparer.Ordinal);

        bool pack = canPack && (options.PackParameters ?? true);
        _arenas = new ShadowArena[_profiles.Length];
        // A whole parameter is its own source (packing re-points it); a shard's source is a view of its box.
        var sources = _items.Select(i => i.IsPartial ? i.BoxOf(_slots[i.Slot].Tensor!) : _slots[i.Slot].Tensor!).ToList();
        var boxes = _items.Select(i => i.Info with { Shape = i.Sizes }).ToList();
        // Another Parameter object over a tied tensor's memory follows it when packing re-points it, so they stay tied.
        var followers = _items.Select((item, i) => _aliases.Where(a => a.Item == i && !ReferenceEquals(_slots[a.Slot].Tensor, _slots[item.Slot].Tensor))
            .Select(a => _slots[a.Slot].Tensor!).ToArray()).ToList();
        try
        {
            using var _ = torch.no_grad();
            // Only the first arena packs: the parameters can alias one flat buffer, which every profile then reads.
            for (int k = 0; k < _arenas.Length; k++) _arenas[k] = new ShadowArena(boxes, sources, pack && k == 0, followers);
            BindAnchors(boxes, sources);
            _shadowRoots = new object[_profiles.Length];
            for (int k = 0; k < _profiles.Length; k++)
            {
                var arena = _arenas[k];
                _shadowRoots[k] = TypedShadowTree.Build(model, _slots, collector.Groups, s =>
                    _itemOfSlot[s] is var i and >= 0 ? (arena[i], "")
                    : (null, EmaExclusions.Describe(exclusions[s])));
            }
            PlanSteps(options);
        }
        catch
        {
            foreach (var arena in _arenas) arena?.Dispose();
            foreach (var anchor in _anchors) anchor?.Dispose();
            throw;
        }
        finally
        {
            for (int i = 0; i < _items.Length; i++)
            {
                if (_items[i].IsPartial) sources[i].Dispose();
            }
        }
    }

    // The shape every rank agrees on: the tensor's own, or for an FSDP-style model the one the caller gives.
    private static long[] GlobalShape(ParameterSlot slot, torch.Tensor t, EmaExclusion exclusion, IReadOnlyDictionary<string, long[]>? globalShapes)
    {
        if (globalShapes is null || exclusion != EmaExclusion.None) return t.shape;
        if (globalShapes.TryGetValue(slot.FullName, out var shape)) return shape;
        // Buffers are replicated (FSDP keeps them whole on every rank), so their own shape is the global one.
        if (slot.IsBuffer) return t.shape;
        throw new ArgumentException($"globalShapes has no entry for parameter '{slot.FullName}'.", nameof(globalShapes));
    }

    private ShadowItem NewItem(int slot, EmaParameterInfo info, torch.Tensor live, bool liveIsLocal)
    {
        (long[] Offsets, long[] Sizes) box = (new long[info.Shape.Length], info.Shape);
        try
        {
            // One rank keeps every tensor whole, whatever its shard map says.
            if (Placement.WorldSize > 1) box = ShardLayout.Box(info.Shape, info.ShardDim, Placement.WorldSize, Placement.Rank);
        }
        catch (ArgumentOutOfRangeException e)
        {
            throw new InvalidOperationException($"Parameter '{info.Name}': {e.Message.Split('\n')[0]}", e);
        }
        if (liveIsLocal && !live.shape.AsSpan().SequenceEqual(box.Sizes))
        {
            throw new ArgumentException(
                $"Parameter '{info.Name}' holds [{string.Join(", ", live.shape)}], but rank {Placement.Rank} of {Placement.WorldSize} owns [{string.Join(", ", box.Sizes)}] of {info.ShapeText}.",
                "globalShapes");
        }
        bool whole = box.Sizes.AsSpan().SequenceEqual(info.Shape);
        var kernel = RawCpuBackend.KernelFor(info.ShadowDType, info.DType);
        long rowElements = 1;
        for (int d = 1; d < info.Shape.Length; d++) rowElements *= info.Shape[d];
        // A dim-0 box of a whole parameter is one contiguous range of it; so is a parameter that is its box.
        bool liveIsBox = liveIsLocal || whole;
        bool contiguous = liveIsBox || info.ShardDim == 0;
        long startElement = liveIsBox ? 0 : box.Offsets[0] * rowElements;
        long numel = 1;
        foreach (var size in box.Sizes) numel *= size;
        return new ShadowItem(slot, info, box.Offsets, box.Sizes, liveIsBox, startElement * RawCpuBackend.ParameterElementSize(kernel), numel, kernel,
            rawCapable: contiguous && kernel != KernelKind.None && info.Device.type == DeviceType.CPU);
    }

    /// <summary>This rank and the world size (rank 0 of 1 for a dense manager).</summary>
    internal RankInfo Placement { get; }

    private protected bool NamedProfiles { get; }

    /// <summary>The options this manager was built with.</summary>
    public EmaOptions Options { get; }

    /// <summary>The configured constant decay (<see cref="EmaOptions.Decay"/>); with a schedule, see <see cref="CurrentDecay"/>.</summary>
    public double Decay { get; }

    /// <summary>The decay schedule (a constant one when <see cref="EmaOptions.Schedule"/> is not set); of the first profile when there are several.</summary>
    public EmaSchedule Schedule => _profiles[0].Schedule;

    /// <summary>The decay the last update applied (NaN before the first), kept apart from any configured maximum; of the first profile when there are several.</summary>
    public double CurrentDecay => _currentDecay[0];

    /// <summary>Number of updates applied (restored by <see cref="Load"/>).</summary>
    public long Step { get; private set; }

    /// <summary>Number of tensors with a shadow (parameters, and buffers when <see cref="EmaOptions.TrackBuffers"/>); a tied tensor counts once.</summary>
    public int Count => _items.Length;

    /// <summary>Names of the tensors with a shadow, in visit order (parameters in <c>named_parameters()</c> order, buffers in <c>named_buffers()</c> order); a tied tensor under its first name only.</summary>
    public IReadOnlyList<string> TrackedNames { get; }

    /// <summary>
    /// Tied weights: each later name of an averaged tensor that the model reaches under several names (the same
    /// Parameter object, or the same memory, shape and strides), with the first name, which owns the one shadow. An
    /// alias has no key of its own in state dicts and checkpoints; the indexer and the typed shadow give the owner's shadow.
    /// </summary>
    public IReadOnlyDictionary<string, string> TiedAliases { get; }

    /// <summary>Every parameter of the model (averaged or not), in <c>named_parameters()</c> order, with its global shape; a tied parameter under its first name only.</summary>
    public IReadOnlyList<EmaParameterInfo> Parameters { get; }

    /// <summary>Every buffer of the model EmaGen can see (tracked or not), in <c>named_buffers()</c> order.</summary>
    public IReadOnlyList<EmaParameterInfo> Buffers { get; }

    /// <summary>True when <paramref name="name"/> has a shadow (an alias of a tied weight has its owner's).</summary>
    public bool Contains(string name) => TryItem(name, out _);

    // The item a name reaches: its own, or for a tied alias its owner's.
    private bool TryItem(string name, out int item) => _itemIndex.TryGetValue(name, out item) || _aliasIndex.TryGetValue(name, out item);

    /// <summary>Bytes of shadow storage this manager holds (all profiles, with a BEMA profile's θ₀; this rank's boxes when sharded).</summary>
    public long ShadowBytes => _arenas.Sum(a => a.Bytes) + _anchors.Sum(a => a?.Bytes ?? 0);

    /// <summary>This manager's shadow of <paramref name="name"/> (a tensor the manager owns; first profile).</summary>
    /// <exception cref="KeyNotFoundException">No averaged tensor has that name.</exception>
    public torch.Tensor this[string name] => ((IProfileHost)this).ShadowOf(0, name);

    /// <summary>The typed shadow tree of the first profile as the generated class <typeparamref name="TShadow"/> (usually reached through the generated <c>Shadow</c> property).</summary>
    public TShadow GetShadow<TShadow>() where TShadow : class => ((IProfileHost)this).GetShadow<TShadow>(0);

    internal IReadOnlyList<EmaProfileBase> ProfileList => _profiles;

    private protected EmaProfileBase ProfileNamed(string name) =>
        _profiles.FirstOrDefault(p => p.Name == name)
        ?? throw new KeyNotFoundException($"No EMA profile is named '{name}'; the profiles are {string.Join(", ", _profiles.Select(p => $"'{p.Name}'"))}.");

    torch.Tensor IProfileHost.ShadowOf(int profile, string name)
    {
        ThrowIfDisposed();
        return TryItem(name, out int i)
            ? _arenas[profile][i]!
            : throw new KeyNotFoundException($"'{name}' is not an averaged tensor of {typeof(TModel).Name}.");
    }

    TShadow IProfileHost.GetShadow<TShadow>(int profile)
    {
        ThrowIfDisposed();
        var root = _shadowRoots[profile];
        return root as TShadow ?? throw new InvalidCastException(
            $"The shadow of {typeof(TModel).FullName} is {root.GetType().FullName}, not {typeof(TShadow).FullName}.");
    }

    double IProfileHost.CurrentDecayOf(int profile) => _currentDecay[profile];

    /// <summary>
    /// Releases the shadow storage and the update threads, after any save still being written. Throws that save's
    /// failure when no save call has reported it yet (everything is released all the same).
    /// </summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        try
        {
            _saves.Dispose();
        }
        finally
        {
            _pool?.Dispose();
            _torch.Dispose();
            _live.Dispose();
            foreach (var arena in _arenas) arena.Dispose();
            foreach (var anchor in _anchors) anchor?.Dispose();
        }
    }

    private protected void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

    private static string Sample(IReadOnlyList<string> items, string separator = ", ")
    {
        var shown = string.Join(separator, items.Take(NamesShownInErrors));
        return items.Count > NamesShownInErrors ? $"{shown}{separator}... and {items.Count - NamesShownInErrors} more" : shown;
    }
}

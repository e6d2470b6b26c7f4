using System;
using System.Collections.Generic;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// One step of either manager, one way: check the live model's slots (<see cref="LiveSlots"/>), queue every unit of work
/// into its backend, run the backends. Built once at bind (which backend each arena group takes, where each packed
/// parameter must be); a step is given the profiles' decays as values and reads nothing back. A unit is a whole packed
/// group while every parameter still aliases its flat buffer, otherwise one averaged box (a whole tensor when dense,
/// this rank's box when sharded). Raw CPU kernels take what they can (<see cref="RawCpuBackend"/>); the rest, and every
/// group off the CPU, go through TorchSharp ops (<see cref="TorchOpsBackend"/>).
/// </summary>
internal sealed class StepPipeline : IDisposable
{
    private readonly ParameterSlot[] _slots;
    private readonly ShadowItem[] _items;
    private readonly IReadOnlyList<ArenaGroup> _groups;
    private readonly LiveSlots _live;
    private readonly CpuWorkerPool? _pool;
    private readonly RawCpuBackend _raw;
    private readonly TorchOpsBackend _torch;
    private readonly Action<string>? _onSlowPath;

    // Per item: its group and where its parameter's data must be while the group is packed (zero when unpacked).
    private readonly int[] _groupOfItem;
    private readonly IntPtr[] _packedPointer;
    private readonly bool[] _rawCapable;
    // Per group: whether it takes TorchSharp ops, and per step whether it runs as one unit.
    private readonly bool[] _torchGroup;
    private readonly bool[] _wholeGroup;
    private string? _slowPathReason;
    private int _lastRawGroups, _lastRawTensors, _lastTorchGroups, _lastTorchTensors;

    /// <param name="slots">Every slot of the model walk.</param>
    /// <param name="items">The averaged boxes, in arena order.</param>
    /// <param name="arenas">One per profile, laid out alike; only the first may pack the parameters.</param>
    /// <param name="options">Threads, the slow-path callback and the forced TorchSharp-op backend.</param>
    public StepPipeline(ParameterSlot[] slots, ShadowItem[] items, ShadowArena[] arenas, EmaOptions options)
    {
        _slots = slots;
        _items = items;
        _onSlowPath = options.OnSlowPath;
        var arena = arenas[0];
        _groups = arena.Groups;
        var watched = new bool[slots.Length];
        foreach (var item in items) watched[item.Slot] = true;
        _live = new LiveSlots(slots, watched);

        _groupOfItem = new int[items.Length];
        _packedPointer = new IntPtr[items.Length];
        _rawCapable = new bool[items.Length];
        long elements = 0;
        for (int i = 0; i < items.Length; i++)
        {
            _groupOfItem[i] = arena.GroupOf(i);
            _rawCapable[i] = items[i].RawCapable && !options.ForceTorchOps;
            elements += items[i].Numel;
            // Device addresses compare the same way as host ones.
            if (_groups[_groupOfItem[i]].PackedParameters is { } packed)
            {
                _packedPointer[i] = NativeTensor.DataPointer(packed) + (nint)(arena.OffsetOf(i) * DTypes.SizeOf(items[i].Info.DType));
            }
        }
        _torchGroup = new bool[_groups.Count];
        _wholeGroup = new bool[_groups.Count];
        for (int g = 0; g < _groups.Count; g++) _torchGroup[g] = options.ForceTorchOps || _groups[g].Device.type != DeviceType.CPU;

        int threads = options.EffectiveThreads;
        if (threads > 1 && elements >= UpdateWorkList.ParallelThreshold) _pool = new CpuWorkerPool(threads);
        _raw = new RawCpuBackend(arenas, items, _live, _pool);
        _torch = new TorchOpsBackend(arenas, items, _live);
    }

    /// <summary>Threads a CPU update uses (1 for small models).</summary>
    public int Threads => _pool?.Parallelism ?? 1;

    /// <summary>
    /// Checks <paramref name="model"/> against the recorded slots, then blends every averaged box into each profile whose
    /// decay is a number (NaN: not written this step). Throws, writing nothing, when a slot does not match.
    /// </summary>
    public void Run<TModel>(TModel model, ReadOnlySpan<double> decays) where TModel : torch.nn.Module, IEmaTracked<TModel>
    {
        _raw.Begin(decays);
        _torch.Begin(decays);
        // The helpers wake while the model is checked, not when the kernels are handed to them.
        _live.Check(model, _pool);
        for (int g = 0; g < _groups.Count; g++) _wholeGroup[g] = _groups[g].PackedParameters is not null;
        for (int i = 0; i < _items.Length; i++)
        {
            int g = _groupOfItem[i];
            _wholeGroup[g] &= _packedPointer[i] != IntPtr.Zero && _packedPointer[i] == _live.Pointer(_items[i].Slot) && (_torchGroup[g] || RawOk(i));
        }
        _lastRawGroups = _lastRawTensors = _lastTorchGroups = _lastTorchTensors = 0;
        bool anyPackedBroken = false;
        for (int g = 0; g < _groups.Count; g++)
        {
            anyPackedBroken |= _groups[g].PackedParameters is not null && !_wholeGroup[g];
            if (!_wholeGroup[g]) continue;
            if (_torchGroup[g]) { _torch.QueueGroup(g); _lastTorchGroups++; }
            else { _raw.QueueGroup(g); _lastRawGroups++; }
        }
        if (anyPackedBroken && _slowPathReason is null) NoteSlowPath();
        for (int i = 0; i < _items.Length; i++)
        {
            int g = _groupOfItem[i];
            if (_wholeGroup[g] || _items[i].Numel == 0) continue;
            if (!_torchGroup[g] && RawOk(i)) { _raw.QueueTensor(i); _lastRawTensors++; }
            else { _torch.QueueTensor(i); _lastTorchTensors++; }
        }
        _raw.Run();
        _torch.Run();
    }

    /// <summary>
    /// Checks <paramref name="model"/> as a step does, without waking the update threads, and returns each averaged
    /// tensor of it (what a copy or a swap pairs with the shadows, in item order).
    /// </summary>
    public torch.Tensor[] LiveTensors<TModel>(TModel model) where TModel : torch.nn.Module, IEmaTracked<TModel>
    {
        // Dynamic submodules are read afresh, so a parameter re-pointed inside one is followed (or reported).
        _live.RefreshDynamic();
        _live.Check(model, pool: null);
        var tensors = new torch.Tensor[_items.Length];
        for (int i = 0; i < _items.Length; i++) tensors[i] = _live.Tensor(_items[i].Slot)!;
        return tensors;
    }

    private bool RawOk(int item) => _rawCapable[item] && _live.IsContiguous(_items[item].Slot);

    // The first time a packed group does not run as one unit: say so once, naming a parameter.
    private void NoteSlowPath()
    {
        int culprit = -1;
        for (int i = 0; i < _items.Length; i++)
        {
            int g = _groupOfItem[i];
            if (_groups[g].PackedParameters is null || _wholeGroup[g]) continue;
            bool moved = _packedPointer[i] != _live.Pointer(_items[i].Slot);
            if (culprit < 0 || moved) culprit = i;
            if (moved) break;
        }
        if (culprit < 0) return;
        string name = _slots[_items[culprit].Slot].FullName;
        var group = _groups[_groupOfItem[culprit]];
        _slowPathReason = _packedPointer[culprit] != _live.Pointer(_items[culprit].Slot)
            ? $"parameter '{name}' no longer aliases its packed flat buffer (re-pointed after the EMA manager was built, say by to() or set_()); its group of {group.ShadowDType} shadows is updated tensor by tensor from now on. Build a new manager to pack again."
            : $"parameter '{name}' cannot take the raw CPU kernel (layout or dtype); its packed group is updated tensor by tensor.";
        _onSlowPath?.Invoke(_slowPathReason);
    }

    /// <summary>A description of the update path (see <see cref="EmaManagerBase{TModel}.UpdatePath"/>).</summary>
    public string Describe()
    {
        int packed = 0;
        var notPacked = new List<string>();
        foreach (var g in _groups)
        {
            if (g.PackedParameters is not null) packed++;
            else if (g.NotPackedReason is { } reason) notPacked.Add(reason);
        }
        var text = $"{_groups.Count} group(s), {packed} packed; at the last update {_lastRawGroups} packed group(s) ran as one pass each and {_lastRawTensors} tensor(s) one by one";
        if (_lastTorchGroups + _lastTorchTensors > 0) text += $"; through TorchSharp ops: {_lastTorchGroups} packed group(s) and {_lastTorchTensors} tensor(s)";
        if (notPacked.Count > 0) text += "; not packed: " + string.Join("; ", notPacked);
        if (_slowPathReason is not null) text += "; slow path: " + _slowPathReason;
        return text;
    }

    public void Dispose() => _pool?.Dispose();
}

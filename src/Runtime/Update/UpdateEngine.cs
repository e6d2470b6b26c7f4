using System;
using System.Collections.Generic;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// Executes updates for one manager. A step is two phases: <see cref="Check{TModel}"/> checks every slot of the live
/// model against the recorded layout (<see cref="LiveSlots"/>, shared with the sharded manager) and learns each
/// parameter's data pointer; only when every slot checked out does <see cref="Apply"/> write. Each arena group has a
/// backend (<see cref="IUpdateBackend"/>): raw CPU kernels on the CPU, TorchSharp ops on other devices. A packed group
/// whose parameters all still alias its flat buffer is one unit of work; otherwise each tensor is (and a tensor the raw
/// kernels cannot take, say a non-contiguous one, goes to the TorchSharp-op backend).
/// </summary>
internal sealed class UpdateEngine : IDisposable
{
    private readonly ParameterSlot[] _slots;
    private readonly LiveSlots _live;
    private readonly int[] _itemOfSlot;
    private readonly int[] _slotOfItem;
    private readonly ShadowArena[] _arenas;
    private readonly int _items;

    // Per profile, then per averaged parameter ("item") in visit order.
    private readonly torch.Tensor[][] _shadow;
    private readonly IntPtr[][] _shadowPointer;

    // Per averaged parameter ("item"), in visit order.
    private readonly long[] _count;
    private readonly KernelKind[] _kernel;
    private readonly bool[] _rawCapable; // before contiguity, which the step's check learns
    private readonly IntPtr[] _expectedPackedPointer;
    private readonly int[] _groupOfItem;

    // Per group: its backend (TorchSharp ops or raw kernels), and per step whether it runs as one unit.
    private readonly bool[] _torchGroup;
    private readonly bool[] _wholeGroup;

    private readonly UpdateWorkList _work;
    private readonly CpuWorkerPool? _pool;
    private readonly RawCpuBackend _raw;
    private readonly TorchOpsBackend _torch;
    private readonly Action<string>? _onSlowPath;
    private string? _slowPathReason;
    private int _lastRawGroups, _lastRawTensors, _lastTorchGroups, _lastTorchTensors;

    // arenas: one per profile, built from the same parameters; only the first may pack them.
    public UpdateEngine(ParameterSlot[] slots, int[] parameterOfSlot, EmaParameterInfo[] parameters,
        ShadowArena[] arenas, int threads, Action<string>? onSlowPath = null, bool forceTorch = false)
    {
        _onSlowPath = onSlowPath;
        _slots = slots;
        _arenas = arenas;
        var arena = arenas[0];
        int profiles = arenas.Length;

        _itemOfSlot = new int[slots.Length];
        var watched = new bool[slots.Length];
        int items = 0;
        for (int s = 0; s < slots.Length; s++)
        {
            int p = parameterOfSlot[s];
            _itemOfSlot[s] = p >= 0 && parameters[p].Tracked ? items++ : -1;
            watched[s] = _itemOfSlot[s] >= 0;
        }
        _items = items;
        _live = new LiveSlots(slots, watched);
        _slotOfItem = new int[items];
        _shadow = new torch.Tensor[profiles][];
        _shadowPointer = new IntPtr[profiles][];
        for (int k = 0; k < profiles; k++)
        {
            _shadow[k] = new torch.Tensor[items];
            _shadowPointer[k] = new IntPtr[items];
        }
        _count = new long[items];
        _kernel = new KernelKind[items];
        _rawCapable = new bool[items];
        _expectedPackedPointer = new IntPtr[items];
        _groupOfItem = new int[items];
        int groupCount = arena.Groups.Count;
        _torchGroup = new bool[groupCount];
        _wholeGroup = new bool[groupCount];
        for (int g = 0; g < groupCount; g++) _torchGroup[g] = forceTorch || arena.Groups[g].Device.type != DeviceType.CPU;
        for (int s = 0; s < slots.Length; s++)
        {
            int item = _itemOfSlot[s];
            if (item < 0) continue;
            int p = parameterOfSlot[s];
            var info = parameters[p];
            for (int k = 0; k < profiles; k++)
            {
                var shadow = arenas[k][p]!;
                _shadow[k][item] = shadow;
                _shadowPointer[k][item] = NativeTensor.CpuDataPointer(shadow);
            }
            _count[item] = info.Numel;
            _slotOfItem[item] = s;
            _kernel[item] = KernelKinds.For(info.ShadowDType, info.DType);
            _rawCapable[item] = !forceTorch && info.Device.type == DeviceType.CPU && _kernel[item] != KernelKind.None;
            _groupOfItem[item] = arena.GroupOf(p);
            var group = arena.Groups[_groupOfItem[item]];
            // Where the parameter's data must be while its group is packed (device addresses compare the same way).
            if (group.PackedParameters is { } packed)
            {
                _expectedPackedPointer[item] = NativeTensor.DataPointer(packed) + (nint)(arena.OffsetOf(p) * DTypes.SizeOf(info.DType));
            }
        }

        _work = new UpdateWorkList(profiles, Math.Max(items, groupCount));

        long totalElements = 0;
        foreach (var c in _count) totalElements += c;
        if (threads > 1 && totalElements >= UpdateWorkList.ParallelThreshold) _pool = new CpuWorkerPool(threads);
        var targets = new UpdateTargets(arenas, _shadow, _shadowPointer, _count, _kernel, _live, _slotOfItem);
        _raw = new RawCpuBackend(targets, _work, _pool);
        _torch = new TorchOpsBackend(targets, _work);
    }

    public int Threads => _pool?.Parallelism ?? 1;

    /// <summary>Whether the next <see cref="Apply"/> writes profile <paramref name="profile"/>, and with which decay (schedules change it per step).</summary>
    public void SetProfile(int profile, bool active, double decay) => _work.SetProfile(profile, active, decay);

    /// <summary>The decay last set for profile <paramref name="profile"/>.</summary>
    public double DecayOf(int profile) => _work.DecayOf(profile);

    /// <summary>
    /// Checks every slot of <paramref name="model"/> against the recorded layout and learns where each averaged
    /// parameter's data is; throws, writing nothing, on a mismatch.
    /// </summary>
    public void Check<TModel>(TModel model) where TModel : torch.nn.Module, IEmaTracked<TModel>
    {
        // The helpers wake while the model is checked, not when the kernels are handed to them.
        _live.Check(model, _pool);
    }

    /// <summary>Makes the next check read every dynamic module's registered tensors again.</summary>
    public void RefreshDynamic() => _live.RefreshDynamic();

    /// <summary>Writes the update for the slots checked last.</summary>
    public void Apply()
    {
        if (_work.BeginStep() == 0) return;
        // A packed group runs as one unit while every parameter still aliases its flat buffer and, for the raw kernels,
        // can take them.
        var groups = _arenas[0].Groups;
        for (int g = 0; g < groups.Count; g++) _wholeGroup[g] = groups[g].PackedParameters is not null;
        for (int item = 0; item < _items; item++)
        {
            int g = _groupOfItem[item];
            _wholeGroup[g] &= _expectedPackedPointer[item] != IntPtr.Zero && _expectedPackedPointer[item] == PointerOf(item)
                && (_torchGroup[g] || RawOk(item));
        }
        _lastRawGroups = _lastRawTensors = _lastTorchGroups = _lastTorchTensors = 0;
        bool anyPackedBroken = false;
        for (int g = 0; g < groups.Count; g++)
        {
            anyPackedBroken |= groups[g].PackedParameters is not null && !_wholeGroup[g];
            if (!_wholeGroup[g]) continue;
            if (_torchGroup[g])
            {
                _torch.QueueGroup(g);
                _lastTorchGroups++;
            }
            else
            {
                _raw.QueueGroup(g);
                _lastRawGroups++;
            }
        }
        if (anyPackedBroken && _slowPathReason is null) NoteSlowPath();
        for (int item = 0; item < _items; item++)
        {
            int g = _groupOfItem[item];
            if (_wholeGroup[g]) continue;
            if (!_torchGroup[g] && RawOk(item))
            {
                _raw.QueueTensor(item);
                _lastRawTensors++;
            }
            else
            {
                _torch.QueueTensor(item);
                _lastTorchTensors++;
            }
        }
        _raw.Run();
        _torch.Run();
    }

    private IntPtr PointerOf(int item) => _live.Pointer(_slotOfItem[item]);

    private bool RawOk(int item) => _rawCapable[item] && _live.IsContiguous(_slotOfItem[item]);

    // The first time a packed group does not run as one unit: say so once, naming a parameter.
    private void NoteSlowPath()
    {
        var groups = _arenas[0].Groups;
        int culprit = -1;
        for (int item = 0; item < _items; item++)
        {
            int g = _groupOfItem[item];
            if (groups[g].PackedParameters is null || _wholeGroup[g]) continue;
            bool moved = _expectedPackedPointer[item] != PointerOf(item);
            if (culprit < 0 || moved) culprit = item;
            if (moved) break;
        }
        if (culprit < 0) return;
        string name = _slots[_slotOfItem[culprit]].FullName;
        var group = groups[_groupOfItem[culprit]];
        _slowPathReason = _expectedPackedPointer[culprit] != PointerOf(culprit)
            ? $"parameter '{name}' no longer aliases its packed flat buffer (re-pointed after the EMA manager was built, say by to() or set_()); its group of {group.ShadowDType} shadows is updated tensor by tensor from now on. Build a new manager to pack again."
            : $"parameter '{name}' cannot take the raw CPU kernel (layout or dtype); its packed group is updated tensor by tensor.";
        _onSlowPath?.Invoke(_slowPathReason);
    }

    /// <summary>A description of the update path (see <c>EmaManager.UpdatePath</c>).</summary>
    public string DescribePath()
    {
        var groups = _arenas[0].Groups;
        int packed = 0;
        var notPacked = new List<string>();
        foreach (var g in groups)
        {
            if (g.PackedParameters is not null) packed++;
            else if (g.NotPackedReason is { } reason) notPacked.Add(reason);
        }
        var text = $"{groups.Count} group(s), {packed} packed; at the last update {_lastRawGroups} packed group(s) ran as one pass each and {_lastRawTensors} tensor(s) one by one";
        if (_lastTorchGroups + _lastTorchTensors > 0) text += $"; through TorchSharp ops: {_lastTorchGroups} packed group(s) and {_lastTorchTensors} tensor(s)";
        if (notPacked.Count > 0) text += "; not packed: " + string.Join("; ", notPacked);
        if (_slowPathReason is not null) text += "; slow path: " + _slowPathReason;
        return text;
    }

    public void Dispose()
    {
        _pool?.Dispose();
    }
}

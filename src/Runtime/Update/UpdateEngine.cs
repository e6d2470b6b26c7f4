using System;
using System.Collections.Generic;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// Executes updates for one manager. A step is two phases: <see cref="Check{TModel}"/> checks every slot of the live
/// model against the recorded layout (<see cref="LiveSlots"/>, shared with the sharded manager) and learns each
/// parameter's data pointer; only when every slot checked out does <see cref="Apply"/> write. On the CPU the writes are an <see cref="UpdateWorkList"/> of SIMD
/// kernels over raw memory (one entry per intact packed group, else per parameter; every profile in one pass), split
/// across threads for large models: no TorchSharp calls, no managed allocations. Parameters a kernel cannot take
/// (other devices, non-contiguous, unusual dtypes) go through TorchSharp ops instead.
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
    private readonly bool[] _rawCapable; // before contiguity, which is learnt per step
    private readonly bool[] _rawOk;
    private readonly IntPtr[] _expectedPackedPointer;
    private readonly int[] _groupOfItem;
    private readonly bool[] _groupIntact;

    private readonly UpdateWorkList _work;
    private readonly CpuWorkerPool? _pool;
    private readonly bool _forceTorch;
    private readonly Action<string>? _onSlowPath;
    private string? _slowPathReason;
    private int _lastIntactGroups;
    private int _lastPerTensorItems;

    // arenas: one per profile, built from the same parameters; only the first may pack them.
    public UpdateEngine(ParameterSlot[] slots, int[] parameterOfSlot, EmaParameterInfo[] parameters,
        ShadowArena[] arenas, int threads, Action<string>? onSlowPath = null, bool forceTorch = false)
    {
        _onSlowPath = onSlowPath;
        _forceTorch = forceTorch;
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
        _rawOk = new bool[items];
        _expectedPackedPointer = new IntPtr[items];
        _groupOfItem = new int[items];
        _groupIntact = new bool[arena.Groups.Count];
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
                _shadowPointer[k][item] = info.Device.type == DeviceType.CPU ? NativeTensor.DataPointer(shadow) : IntPtr.Zero;
            }
            _count[item] = info.Numel;
            _slotOfItem[item] = s;
            _kernel[item] = KernelKinds.For(info.ShadowDType, info.DType);
            _rawCapable[item] = !forceTorch && info.Device.type == DeviceType.CPU && _kernel[item] != KernelKind.None;
            _groupOfItem[item] = arena.GroupOf(p);
            var group = arena.Groups[_groupOfItem[item]];
            if (group.PackedParameters is { } packed && info.Device.type == DeviceType.CPU)
            {
                _expectedPackedPointer[item] = NativeTensor.DataPointer(packed)
                    + (nint)(arena.OffsetOf(p) * KernelKinds.ParameterElementSize(group.Kernel));
            }
        }

        _work = new UpdateWorkList(profiles, Math.Max(items, arena.Groups.Count));

        long totalElements = 0;
        foreach (var c in _count) totalElements += c;
        if (threads > 1 && totalElements >= UpdateWorkList.ParallelThreshold) _pool = new CpuWorkerPool(threads);
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
        _pool?.WakeAhead();
        _live.Check(model);
        for (int item = 0; item < _items; item++) _rawOk[item] = _rawCapable[item] && _live.IsContiguous(_slotOfItem[item]);
    }

    /// <summary>Makes the next check read every dynamic module's registered tensors again.</summary>
    public void RefreshDynamic() => _live.RefreshDynamic();

    /// <summary>Writes the update for the slots checked last.</summary>
    public void Apply()
    {
        if (_work.BeginStep() == 0)
        {
            _live.Release();
            return;
        }
        bool allRaw = true;
        Array.Fill(_groupIntact, true);
        for (int item = 0; item < _items; item++)
        {
            allRaw &= _rawOk[item];
            int group = _groupOfItem[item];
            _groupIntact[group] &= _rawOk[item] && _expectedPackedPointer[item] != IntPtr.Zero && _expectedPackedPointer[item] == PointerOf(item);
        }
        if (_slowPathReason is null && AnyPackedCpuGroupBroken()) NoteSlowPath();
        BuildWork();
        _work.Run(_pool);
        if (!allRaw) ApplyThroughTorch();
        _live.Release();
    }

    private IntPtr PointerOf(int item) => _live.Pointer(_slotOfItem[item]);

    // Per group, not per tensor: this runs every step until a slow path has been noted. Off the CPU, packed groups go
    // through TorchSharp ops on the flat buffer, not through pointer checks.
    private bool AnyPackedCpuGroupBroken()
    {
        var groups = _arenas[0].Groups;
        for (int g = 0; g < groups.Count; g++)
        {
            if (groups[g].PackedParameters is not null && !_groupIntact[g] && groups[g].Device.type == DeviceType.CPU) return true;
        }
        return false;
    }

    // The first time a packed group no longer aliases its flat buffer: say so once, naming a parameter.
    private void NoteSlowPath()
    {
        var groups = _arenas[0].Groups;
        int culprit = -1;
        for (int item = 0; item < _items; item++)
        {
            int g = _groupOfItem[item];
            if (groups[g].PackedParameters is null || _groupIntact[g] || groups[g].Device.type != DeviceType.CPU) continue;
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
        var text = $"{groups.Count} group(s), {packed} packed; at the last update {_lastIntactGroups} packed group(s) ran as one pass each and {_lastPerTensorItems} tensor(s) one by one";
        if (notPacked.Count > 0) text += "; not packed: " + string.Join("; ", notPacked);
        if (_slowPathReason is not null) text += "; slow path: " + _slowPathReason;
        return text;
    }

    // One entry per packed group whose parameters all still alias its flat buffer (padding between slices is zero in
    // both buffers and stays zero, so the group is one contiguous range), and one entry per remaining item.
    private void BuildWork()
    {
        var groups = _arenas[0].Groups;
        _lastIntactGroups = 0;
        _lastPerTensorItems = 0;
        for (int g = 0; g < groups.Count; g++)
        {
            if (!_groupIntact[g]) continue;
            _lastIntactGroups++;
            var group = groups[g];
            for (int a = 0; a < _work.ActiveCount; a++)
            {
                int k = _work.ActiveProfile(a);
                _work.SetShadow(k, NativeTensor.DataPointer(_arenas[k].Groups[g].Shadow));
            }
            _work.Add(NativeTensor.DataPointer(group.PackedParameters!), group.Elements, group.Kernel);
        }
        for (int item = 0; item < _items; item++)
        {
            if (_groupIntact[_groupOfItem[item]]) continue;
            _lastPerTensorItems++;
            if (!_rawOk[item]) continue;
            for (int a = 0; a < _work.ActiveCount; a++)
            {
                int k = _work.ActiveProfile(a);
                _work.SetShadow(k, _shadowPointer[k][item]);
            }
            _work.Add(PointerOf(item), _count[item], _kernel[item]);
        }
    }

    // Devices other than the CPU, non-contiguous parameters and dtype pairs without a kernel (and everything, with
    // EmaOptions.ForceTorchOps): the same expression as the kernels, through TorchSharp ops (TorchBlend).
    private void ApplyThroughTorch()
    {
        using var _ = torch.no_grad();
        for (int a = 0; a < _work.ActiveCount; a++)
        {
            int k = _work.ActiveProfile(a);
            if (TryApplyPackedThroughTorch(k)) continue;
            double decay = _work.DecayOf(k);
            for (int item = 0; item < _items; item++)
            {
                if (_rawOk[item]) continue;
                TorchBlend.Apply(_shadow[k][item], _live.Tensor(_slotOfItem[item])!, decay);
            }
        }
    }

    // Off the CPU (or forced), a fully packed model is one TorchSharp blend per group: no per-tensor launches.
    private bool TryApplyPackedThroughTorch(int profile)
    {
        var packedGroups = _arenas[0].Groups;
        foreach (var group in packedGroups)
        {
            if (group.PackedParameters is null || (group.Device.type == DeviceType.CPU && !_forceTorch)) return false;
        }
        // Off the CPU the data pointers are not compared; a packed model keeps its layout unless the user re-points
        // parameters, which EmaManager documents as unpacking (a new manager re-packs).
        double decay = _work.DecayOf(profile);
        for (int g = 0; g < packedGroups.Count; g++)
        {
            TorchBlend.Apply(_arenas[profile].Groups[g].Shadow, packedGroups[g].PackedParameters!, decay);
        }
        return true;
    }

    public void Dispose()
    {
        _pool?.Dispose();
    }
}

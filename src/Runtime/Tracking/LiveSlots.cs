using System;
using TorchSharp;
using TorchSharp.Modules;

namespace EmaGen;

/// <summary>
/// The per-step check of a live model against the slots a manager recorded when it was built, shared by the dense
/// engine and the sharded manager: each visited slot must have the recorded local name and presence, and each watched
/// (averaged) slot's tensor is followed by object and data pointer. A tensor seen before at the same pointer costs a
/// reference compare; a new object or pointer is re-checked (elements, dtype, device, contiguity) before anything is
/// written, so a re-pointed parameter is never averaged from stale memory. The data pointers of the tensors seen last
/// step are read in one pass (<see cref="KnownPointerPass"/>) rather than one by one during the walk.
/// </summary>
internal sealed class LiveSlots
{
    private readonly ParameterSlot[] _slots;
    // The recorded local names alone (the generated walk passes the same string objects, so most compares are one
    // reference compare over an array of references rather than over the slot records).
    private readonly string[] _localNames;
    private readonly long[] _numel;
    private readonly bool[] _watched;
    private readonly torch.ScalarType[] _dtype;
    private readonly DeviceType[] _device;
    // Per watched slot, the tensor of the last successful check; a walk that finds another object parks it in
    // _changed until it is re-checked, so an unchanged slot costs the walk a reference compare and no store.
    private readonly torch.Tensor?[] _known;
    private readonly torch.Tensor?[] _changed;
    private readonly int[] _changedSlots;
    private int _changedCount;
    private readonly IntPtr[] _knownPointer;
    private readonly bool[] _contiguous;
    private readonly IntPtr[] _read;
    private readonly KnownPointerPass _pointerPass;
    private readonly DynamicModuleCache _dynamic = new();
    private int _cursor;

    /// <param name="slots">The slots recorded at bind, with the tensors they held then.</param>
    /// <param name="watched">Per slot, whether its tensor is averaged (its pointer, dtype and device are followed).</param>
    public LiveSlots(ParameterSlot[] slots, bool[] watched)
    {
        _slots = slots;
        _watched = watched;
        _localNames = new string[slots.Length];
        for (int s = 0; s < slots.Length; s++) _localNames[s] = slots[s].LocalName;
        _numel = new long[slots.Length];
        _dtype = new torch.ScalarType[slots.Length];
        _device = new DeviceType[slots.Length];
        for (int s = 0; s < slots.Length; s++)
        {
            _numel[s] = slots[s].Tensor?.numel() ?? -1;
            if (slots[s].Tensor is { } t)
            {
                _dtype[s] = t.dtype;
                _device[s] = t.device_type;
            }
        }
        _known = new torch.Tensor?[slots.Length];
        _changed = new torch.Tensor?[slots.Length];
        _changedSlots = new int[slots.Length];
        _knownPointer = new IntPtr[slots.Length];
        _contiguous = new bool[slots.Length];
        _read = new IntPtr[slots.Length];
        _pointerPass = new KnownPointerPass(_known, _read);
    }

    public int Count => _slots.Length;

    /// <summary>The tensor the last successful <see cref="Check{TModel}"/> found in watched slot <paramref name="slot"/>.</summary>
    public torch.Tensor? Tensor(int slot) => _known[slot];

    /// <summary>The data pointer of a watched slot's tensor at the last check.</summary>
    public IntPtr Pointer(int slot) => _knownPointer[slot];

    /// <summary>Whether a watched slot's tensor was contiguous when its object or pointer last changed.</summary>
    public bool IsContiguous(int slot) => _contiguous[slot];

    /// <summary>
    /// Walks <paramref name="model"/> and checks every slot; throws, naming the slot, before the caller writes anything.
    /// Wakes <paramref name="pool"/>'s helpers first: they share the pointer reads while the caller walks, and are
    /// running when the update is handed to them.
    /// </summary>
    public void Check<TModel>(TModel model, CpuWorkerPool? pool) where TModel : torch.nn.Module, IEmaTracked<TModel>
    {
        _pointerPass.Arm();
        pool?.WakeAhead(_pointerPass);
        // The last check's parked tensors (re-checked then, or left by a check that threw).
        for (int c = 0; c < _changedCount; c++) _changed[_changedSlots[c]] = null;
        _changedCount = 0;
        try
        {
            _cursor = 0;
            _dynamic.Begin();
            var visitor = new LiveSlotVisitor(this);
            TModel.VisitParameters(model, ref visitor);
            if (_cursor != _slots.Length)
            {
                throw new InvalidOperationException(
                    $"The model has {_cursor} parameter slots, but had {_slots.Length} when the EMA manager was built.");
            }
        }
        finally
        {
            // Also when the walk threw: no helper may still be reading a block when the next check arms the pass.
            _pointerPass.Complete();
        }
        for (int c = 0; c < _changedCount; c++)
        {
            int s = _changedSlots[c];
            var tensor = _changed[s]!;
            var pointer = NativeTensor.DataPointer(tensor);
            Recheck(s, tensor);
            _known[s] = tensor;
            _knownPointer[s] = pointer;
            _read[s] = pointer;
        }
        for (int s = 0; s < _slots.Length; s++)
        {
            if (!_watched[s] || _read[s] == _knownPointer[s]) continue;
            // The same object at another address (set_, a storage swap), or one disposed since (zero: the call throws).
            var tensor = _known[s]!;
            var pointer = _read[s] != IntPtr.Zero ? _read[s] : NativeTensor.DataPointer(tensor);
            Recheck(s, tensor);
            _knownPointer[s] = pointer;
        }
    }

    /// <summary>Makes the next check read every dynamic module's registered tensors again.</summary>
    public void RefreshDynamic() => _dynamic.Invalidate();

    internal void VisitDynamic(torch.nn.Module module)
    {
        var contents = _dynamic.Next(module);
        for (int i = 0; i < contents.Names.Length; i++) Visit(contents.Names[i], contents.Tensors[i]);
    }

    internal void Visit(string name, torch.Tensor? tensor)
    {
        int slot = _cursor++;
        SlotOrder.ThrowIfBeyond(slot, _slots.Length, name);
        // Most calls end at the reference compare inside string.Equals: the walk passes the recorded string objects.
        if (!ReferenceEquals(_localNames[slot], name)) SlotOrder.ThrowIfRenamed(slot, name, _localNames[slot], _slots[slot].FullName);
        if ((tensor is null) != (_numel[slot] < 0))
        {
            throw new InvalidOperationException(
                $"Parameter '{_slots[slot].FullName}' is {(tensor is null ? "now null" : "now present")} in the model, unlike when the EMA manager was built.");
        }
        if (_watched[slot] && !ReferenceEquals(tensor, _known[slot]))
        {
            _changed[slot] = tensor;
            _changedSlots[_changedCount++] = slot;
        }
    }

    private void Recheck(int slot, torch.Tensor tensor)
    {
        var name = _slots[slot].FullName;
        long numel = tensor.numel();
        if (numel != _numel[slot])
        {
            throw new InvalidOperationException(
                $"Parameter '{name}' has {numel} elements, but {_numel[slot]} when the EMA manager was built.");
        }
        if (tensor.dtype != _dtype[slot])
        {
            throw new InvalidOperationException(
                $"Parameter '{name}' is {tensor.dtype}, but was {_dtype[slot]} when the EMA manager was built; build a new manager after changing dtypes.");
        }
        if (tensor.device_type != _device[slot])
        {
            throw new InvalidOperationException(
                $"Parameter '{name}' is on {tensor.device_type}, but was on {_device[slot]} when the EMA manager was built; build a new manager after moving the model.");
        }
        _contiguous[slot] = tensor.is_contiguous();
    }
}

/// <summary>Hands each visited slot to <see cref="LiveSlots"/>; names are never concatenated.</summary>
internal readonly struct LiveSlotVisitor : IEmaParameterVisitor
{
    private readonly LiveSlots _slots;

    public LiveSlotVisitor(LiveSlots slots) => _slots = slots;

    public void EnterModule(string name, bool ignored) { }

    public void EnterIndex(int index) { }

    public void ExitModule() { }

    public void DynamicModule(torch.nn.Module module, int shardDim) => _slots.VisitDynamic(module);

    public void Parameter(string name, Parameter? parameter, bool ignored, int shardDim) => _slots.Visit(name, parameter);

    public void Buffer(string name, torch.Tensor? buffer, bool ignored) => _slots.Visit(name, buffer);
}

using System;
using System.Collections.Generic;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using System.Threading;
using TorchSharp;
using TorchSharp.Modules;

namespace EmaGen;

/// <summary>
/// The per-step check of a live model against the slots a manager recorded when it was built: each visited slot must
/// have the recorded local name and presence, and each watched (averaged) slot's tensor is followed by object and data
/// pointer. A tensor seen before at the same pointer costs a reference compare; a new object or pointer is re-checked
/// (elements, dtype, device, contiguity) before anything is written, so a re-pointed parameter is never averaged from
/// stale memory. A fix to slot checking goes here and nowhere else.
/// <para>
/// Tied weights stay as bound: whenever a watched tensor changed, each alias must still be its owner's tensor, and when
/// a data pointer moved, no two owners may have become one tensor (a tie made after bind would give it two shadows).
/// </para>
/// <para>
/// The data pointers of the tensors seen last step are read in one pass rather than one by one during the walk. Each
/// read is a LibTorch call at the end of a chain of dependent cache misses (the native handle, the TensorImpl, the
/// StorageImpl), so each block of tensors is first touched level by level with loads that do not depend on each other
/// (many misses in flight), and the blocks are shared with the update's other threads while the caller walks: a second
/// core keeps its own misses in flight. Nothing is decided from the prefetches; a tensor whose object changed is read
/// again by the caller.
/// </para>
/// <para>
/// The pass reads a packed parameter through a handle of its own: a second LibTorch handle of the same TensorImpl (what
/// <c>contiguous()</c> returns for a contiguous tensor), made when the tensor is first seen where packing put it. A
/// <c>set_()</c> changes that TensorImpl, so the own handle sees every re-point the model's does, and the pass never
/// touches the model's managed Tensor object (a cold line per tensor fewer) nor its native handle. Only tensors in the
/// manager's own flat buffers get one, and only while they stay there, so the storage an own handle keeps alive is the
/// manager's own; the TensorImpl itself (with the parameter's gradient) outlives a disposed model until the manager is
/// disposed or checks another model (documented at EmaOptions.PackParameters). A packed tensor disposed while the
/// model still holds it is therefore not noticed here (its forward pass fails first).
/// </para>
/// <para>
/// Through an own handle the pass does not call LibTorch at all while the tensor stays put: it compares the fields its
/// data pointer is made of (<see cref="TensorImplFields"/>: the StorageImpl, the storage offset, the dtype, the
/// storage's data pointer), its element count and its contiguity flag, two or three cache lines of the TensorImpl
/// against the three or four that <c>data_ptr()</c> reads. A field that moved sends that tensor to the LibTorch call,
/// and to the re-check when its pointer is still the packed one: a count that moved throws there, strides that moved
/// send it to the strided path. The fields are only trusted where they were shown to give LibTorch's own answer for
/// that tensor.
/// </para>
/// </summary>
internal sealed unsafe partial class LiveSlots : IAheadWork, IDisposable
{
    private const int BlockSize = 64;

    private readonly ParameterSlot[] _slots;
    // The recorded local names alone (the generated walk passes the same string objects, so most compares are one
    // reference compare over an array of references rather than over the slot records).
    private readonly string[] _localNames;
    private readonly long[] _numel;
    private readonly bool[] _watched;
    private readonly (int Alias, int Owner)[] _ties;
    private readonly bool[] _isAlias;
    // Reused by the check after a move, so a model whose parameters move every step allocates nothing.
    private readonly Dictionary<IntPtr, int> _ownerAt = new();
    private bool _tiesPending, _movedPending;
    private readonly torch.ScalarType[] _dtype;
    private readonly DeviceType[] _device;
    // Per watched slot, the tensor of the last successful check; a walk that finds another object parks it in
    // _changed until it is re-checked, so an unchanged slot costs the walk a reference compare and no store.
    private readonly torch.Tensor?[] _known;
    private readonly torch.Tensor?[] _changed;
    private readonly int[] _changedSlots;
    private int _changedCount;
    private readonly IntPtr[] _knownPointer;
    // Per watched slot, a handle of the same TensorImpl as _known's while it lies where packing put it (else zero), and
    // the Tensor object that owns it; and where packing put the slot's tensor (zero when unpacked).
    private readonly IntPtr[] _packedAt;
    private readonly IntPtr[] _ownHandle;
    private readonly torch.Tensor?[] _own;
    // Per watched slot with an own handle, its TensorImpl's placement fields, element count and layout flags as read when
    // the handle was made or last re-checked: while they stand, the tensor is where packing put it with its bound size and
    // layout, and the pass needs no call into LibTorch (see TensorImplFields).
    private readonly TensorImplFields[] _ownFields;
    // Per watched slot, its tensor's dtype, device and layout-flag word at the last re-check, for tensors read through
    // LibTorch (TensorImplFields.LayoutMoved).
    private readonly ulong[] _typeAndFlags;
    private readonly bool[] _contiguous;
    private readonly IntPtr[] _read;
    private readonly int _blocks;
    private int _nextBlock;
    private int _finishedBlocks;
    // The contents of each dynamic module met in one walk, by the order they are met, so that the per-step walk reads no
    // named_parameters() (which allocates) while the module object is the one read before.
    private readonly List<DynamicModuleContents> _dynamic = new();
    private int _dynamicCursor;
    private int _cursor;
    // The walk shared with LibTorch's team (a SharedWalk of the manager's model type), made at the first check.
    private IPartitionedWork? _walk;

    /// <param name="slots">The slots recorded at bind, with the tensors they held then.</param>
    /// <param name="watched">Per slot, whether its tensor is averaged (its pointer, dtype and device are followed).</param>
    /// <param name="ties">Watched slots bound as another name of an earlier watched slot's tensor (tied weights), with that slot.</param>
    /// <param name="packedAt">Per slot, the data pointer packing gave its tensor in the manager's flat buffer (zero when unpacked).</param>
    public LiveSlots(ParameterSlot[] slots, bool[] watched, (int Alias, int Owner)[] ties, IntPtr[]? packedAt = null)
    {
        _packedAt = packedAt ?? new IntPtr[slots.Length];
        _slots = slots;
        _watched = watched;
        _ties = ties;
        _isAlias = new bool[slots.Length];
        foreach (var (alias, _) in ties) _isAlias[alias] = true;
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
        _ownHandle = new IntPtr[slots.Length];
        _own = new torch.Tensor?[slots.Length];
        _ownFields = new TensorImplFields[slots.Length];
        _typeAndFlags = new ulong[slots.Length];
        _contiguous = new bool[slots.Length];
        _read = new IntPtr[slots.Length];
        _blocks = (slots.Length + BlockSize - 1) / BlockSize;
        _nextBlock = _blocks;
        _finishedBlocks = _blocks;
    }

    public int Count => _slots.Length;

    /// <summary>
    /// Counts the checks that found a watched slot's tensor object, data pointer or layout changed (counted before the
    /// re-check, so also when it threw): while it stands still, whatever was derived from <see cref="Pointer"/> and
    /// <see cref="IsContiguous"/> still holds.
    /// </summary>
    public int Changes { get; private set; }

    /// <summary>The tensor the last successful <see cref="Check{TModel}"/> found in watched slot <paramref name="slot"/>.</summary>
    public torch.Tensor? Tensor(int slot) => _known[slot];

    /// <summary>The data pointer of a watched slot's tensor at the last check.</summary>
    public IntPtr Pointer(int slot) => _knownPointer[slot];

    /// <summary>Whether a watched slot's tensor was contiguous when its object or pointer last changed.</summary>
    public bool IsContiguous(int slot) => _contiguous[slot];

    /// <summary>
    /// Walks <paramref name="model"/> and checks every slot; throws, naming the slot, before the caller writes anything.
    /// <paramref name="pool"/>'s threads share the pointer reads while the caller walks: in a region on LibTorch's team,
    /// or as helpers of the pool's own woken ahead (then running when the update is handed to them).
    /// </summary>
    public void Check<TModel>(TModel model, CpuWorkerPool? pool) where TModel : torch.nn.Module, IEmaTracked<TModel>
    {
        ArmPointerPass();
        // The last check's parked tensors (re-checked then, or left by a check that threw).
        for (int c = 0; c < _changedCount; c++) _changed[_changedSlots[c]] = null;
        _changedCount = 0;
        // One block (up to 64 tensors) is microseconds on the caller: a region would cost more than it shares, and
        // when the team has stopped spinning the caller would wait for its wake-up before the step could begin.
        if (pool is { RunsOnLibTorchTeam: true } && _blocks > 1)
        {
            // The walk on the caller, the pointer blocks shared with the team's other threads, in one region.
            var walk = _walk as SharedWalk<TModel> ?? (SharedWalk<TModel>)(_walk = new SharedWalk<TModel>(this));
            walk.Run(model, pool);
        }
        else
        {
            pool?.WakeAhead(this);
            Walk(model);
        }
        bool moved = false;
        if (_changedCount > 0) Changes++;
        for (int c = 0; c < _changedCount; c++)
        {
            int s = _changedSlots[c];
            var tensor = _changed[s]!;
            var pointer = DataPointer(tensor);
            Recheck(s, tensor);
            moved |= pointer != _knownPointer[s];
            _known[s] = tensor;
            Follow(s, tensor, pointer);
            _knownPointer[s] = pointer;
            _read[s] = pointer;
        }
        for (int s = 0; s < _slots.Length; s++)
        {
            if (!_watched[s] || _read[s] == _knownPointer[s]) continue;
            // The same object at another address (set_, a storage swap), one disposed since (zero: the call throws), or
            // one shrunk or restrided where it was (zero from the pointer pass).
            if (!moved) Changes++;
            var tensor = _known[s]!;
            var pointer = _read[s] != IntPtr.Zero ? _read[s] : DataPointer(tensor);
            Recheck(s, tensor);
            _knownPointer[s] = pointer;
            Follow(s, tensor, pointer);
            moved = true;
        }
        // Pending until a check passes: a check that threw has already recorded the new tensors.
        _tiesPending |= moved || (_changedCount > 0 && _ties.Length > 0);
        _movedPending |= moved;
        if (!_tiesPending) return;
        CheckTies(_movedPending);
        _tiesPending = _movedPending = false;
    }

    // The generated walk over every slot, then the rest of the pointer pass; the walk's exception once all blocks are read.
    private void Walk<TModel>(TModel model) where TModel : torch.nn.Module, IEmaTracked<TModel>
    {
        try
        {
            _cursor = 0;
            _dynamicCursor = 0;
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
            CompletePointerPass();
        }
    }

    // One check's walk as a region on LibTorch's team: part 0 (the caller) walks, the other parts read pointer blocks
    // until none are left. The walk's exception is carried out of the region and thrown as it was.
    private sealed class SharedWalk<TModel>(LiveSlots slots) : IPartitionedWork where TModel : torch.nn.Module, IEmaTracked<TModel>
    {
        private TModel? _model;
        private System.Runtime.ExceptionServices.ExceptionDispatchInfo? _failure;

        public void Run(TModel model, CpuWorkerPool pool)
        {
            _model = model;
            try
            {
                pool.Run(this);
            }
            finally
            {
                _model = null;
            }
            var failure = _failure;
            _failure = null;
            failure?.Throw();
        }

        public void Execute(int part, int parts)
        {
            if (part != 0)
            {
                slots.Help();
                return;
            }
            try
            {
                slots.Walk(_model!);
            }
            catch (Exception e)
            {
                _failure = System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e);
            }
        }
    }

    // Only after a change: an unchanged model keeps its ties.
    private void CheckTies(bool moved)
    {
        foreach (var (alias, owner) in _ties)
        {
            if (ReferenceEquals(_known[alias], _known[owner])) continue;
            if (_knownPointer[alias] != _knownPointer[owner] || !TiedSlots.Same(_known[alias]!, _known[owner]!))
            {
                throw new InvalidOperationException(
                    $"Parameter '{_slots[alias].FullName}' was tied to '{_slots[owner].FullName}' (one tensor, one shadow) when the EMA manager was built, but is now a tensor of its own; build a new manager after untying weights.");
            }
        }
        if (!moved) return;
        var owners = _ownerAt;
        owners.Clear();
        for (int s = 0; s < _slots.Length; s++)
        {
            if (!_watched[s] || _numel[s] <= 0 || _isAlias[s]) continue;
            if (owners.TryAdd(_knownPointer[s], s)) continue;
            int first = owners[_knownPointer[s]];
            // The rule of binding: a parameter and a buffer over one memory are not tied.
            if (_slots[first].IsBuffer == _slots[s].IsBuffer && TiedSlots.Same(_known[first]!, _known[s]!))
            {
                throw new InvalidOperationException(
                    $"Parameters '{_slots[first].FullName}' and '{_slots[s].FullName}' are now one tensor (tied after the EMA manager was built), but each has its own shadow; build a new manager after tying weights.");
            }
        }
    }

    /// <summary>Makes the next check read every dynamic module's registered tensors again.</summary>
    public void RefreshDynamic() => _dynamic.Clear();

    internal void VisitDynamic(torch.nn.Module module)
    {
        // A new module object in the same place is read afresh.
        int at = _dynamicCursor++;
        if (at == _dynamic.Count) _dynamic.Add(DynamicModuleContents.Read(module));
        else if (!ReferenceEquals(_dynamic[at].Module, module)) _dynamic[at] = DynamicModuleContents.Read(module);
        var contents = _dynamic[at];
        for (int i = 0; i < contents.Names.Length; i++) Visit(contents.Names[i], contents.Tensors[i]);
    }

    internal void Visit(string name, torch.Tensor? tensor)
    {
        int slot = _cursor++;
        if (slot >= _slots.Length) SlotOrder.ThrowIfBeyond(slot, _slots.Length, name);
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

    /// <summary>One pointer pass over the tensors of the last check, on the caller alone (what the overhead benchmark times).</summary>
    internal void ReadKnownPointers()
    {
        ArmPointerPass();
        CompletePointerPass();
    }

    /// <summary>
    /// Makes the blocks available to <see cref="Help"/> and <see cref="CompletePointerPass"/>. Every pass armed must be completed
    /// before the next is armed, so that no helper is still inside a block of the old pass.
    /// </summary>
    private void ArmPointerPass()
    {
        // Finished before next: a helper still leaving the last pass either finds no block or takes one of this pass,
        // which then counts toward this pass.
        Volatile.Write(ref _finishedBlocks, 0);
        Volatile.Write(ref _nextBlock, 0);
    }

    /// <summary>Reads blocks of the armed pointer pass until none are left (the caller, or a helper woken ahead).</summary>
    public void Help()
    {
        int block;
        // The read first: a helper polls this while it waits, and must not move the counter once the blocks are out.
        while (Volatile.Read(ref _nextBlock) < _blocks && (block = Interlocked.Increment(ref _nextBlock) - 1) < _blocks)
        {
            ReadBlock(block * BlockSize, Math.Min(_known.Length, (block + 1) * BlockSize));
            Interlocked.Increment(ref _finishedBlocks);
        }
    }

    /// <summary>Reads the blocks nobody has taken, then waits for those the helpers took (a block is microseconds).</summary>
    private void CompletePointerPass()
    {
        Help();
        var spinner = new SpinWait();
        while (Volatile.Read(ref _finishedBlocks) < _blocks) spinner.SpinOnce(sleep1Threshold: -1);
    }

    private void ReadBlock(int from, int to)
    {
        for (int i = from; i < to; i++)
        {
            _read[i] = IntPtr.Zero;
            if (_ownFields[i].IsRead) _ownFields[i].Prefetch();
            else if (_ownHandle[i] != IntPtr.Zero) _read[i] = _ownHandle[i];
            else if (_known[i] is { IsInvalid: false } tensor) _read[i] = tensor.Handle;
        }
        if (Sse.IsSupported) Prefetch(_read, from, to);
        for (int i = from; i < to; i++)
        {
            // A tensor whose fields moved is read through LibTorch, as any other.
            // (A shrunk or restrided tensor can keep its pointer: zero, which no known pointer is, makes the caller re-check it.)
            if (_ownFields[i].IsRead) _read[i] = _ownFields[i].Unchanged() ? _packedAt[i] : OwnMoved(i);
            else if (_read[i] != IntPtr.Zero)
            {
                var handle = _read[i];
                _read[i] = TensorData(handle);
                // Any other tensor shrunk or restrided in place where it was: zero again sends it to the re-check. Where
                // the layout is not LibTorch 2.10's this is not known, and only a moved pointer is followed.
                if (_read[i] == _knownPointer[i] && _read[i] != IntPtr.Zero && TensorImplFields.LayoutMoved(handle, _numel[i], _typeAndFlags[i])) _read[i] = IntPtr.Zero;
            }
        }
    }

    // A packed tensor whose fields moved: its LibTorch pointer, or zero (which no known pointer is) when that is still
    // where packing put it, so that the caller re-checks what else moved: its element count, or its strides.
    private IntPtr OwnMoved(int slot)
    {
        var pointer = TensorData(_ownHandle[slot]);
        return pointer == _packedAt[slot] ? IntPtr.Zero : pointer;
    }

    // Level by level over a block of handles; only loads and prefetches, so a wrong guess about LibTorch's layout costs
    // a useless line, never a wrong answer.
    private static void Prefetch(IntPtr[] handles, int from, int to)
    {
        for (int i = from; i < to; i++)
        {
            if (handles[i] != IntPtr.Zero) Sse.Prefetch0((void*)handles[i]);
        }
        // LibTorchSharp's handle points at an at::Tensor, whose only member is its TensorImpl pointer; what lies where in
        // the TensorImpl is TensorImplFields' to know.
        for (int i = from; i < to; i++)
        {
            if (handles[i] == IntPtr.Zero) continue;
            byte* impl = *(byte**)handles[i];
            if (impl != null) TensorImplFields.PrefetchObject(impl);
        }
        for (int i = from; i < to; i++)
        {
            if (handles[i] == IntPtr.Zero) continue;
            byte* impl = *(byte**)handles[i];
            if (impl == null) continue;
            // data_ptr() reads the StorageImpl's data pointer and, on its second line, its access-check flags.
            byte* storage = TensorImplFields.StorageOf(impl);
            Sse.Prefetch0(storage);
            Sse.Prefetch0(storage + 64);
        }
    }

    // A handle of the pass's own for slot `slot`'s tensor, now at `pointer`, while it lies where packing put it:
    // contiguous() of a contiguous tensor is the same TensorImpl under a second handle. Kept only when it is (compared
    // through the handles' one member, the TensorImpl pointer); a copy or a view would not follow a set_().
    private void Follow(int slot, torch.Tensor tensor, IntPtr pointer)
    {
        _typeAndFlags[slot] = TensorImplFields.TypeAndFlagsOf(tensor.Handle);
        var held = _own[slot];
        if (held is not null && pointer == _packedAt[slot] && *(IntPtr*)held.Handle == *(IntPtr*)tensor.Handle)
        {
            TensorImplFields.TryRead(held.Handle, pointer, _numel[slot], _dtype[slot], out _ownFields[slot]);
            return;
        }
        _ownHandle[slot] = IntPtr.Zero;
        _ownFields[slot] = default;
        _own[slot] = null;
        held?.Dispose();
        if (_packedAt[slot] == IntPtr.Zero || pointer != _packedAt[slot] || !_contiguous[slot]) return;
        var own = tensor.contiguous().DetachFromDisposeScope();
        // A TorchSharp that returned the tensor itself would hand over the model's object: never own (or dispose) it.
        if (ReferenceEquals(own, tensor)) return;
        if (*(IntPtr*)own.Handle != *(IntPtr*)tensor.Handle)
        {
            own.Dispose();
            return;
        }
        _own[slot] = own;
        _ownHandle[slot] = own.Handle;
        TensorImplFields.TryRead(own.Handle, pointer, _numel[slot], _dtype[slot], out _ownFields[slot]);
    }

    public void Dispose()
    {
        for (int s = 0; s < _own.Length; s++)
        {
            _ownHandle[s] = IntPtr.Zero;
            _ownFields[s] = default;
            _own[s]?.Dispose();
            _own[s] = null;
        }
    }

    /// <summary>The data pointer of <paramref name="tensor"/> (storage base plus offset).</summary>
    public static IntPtr DataPointer(torch.Tensor tensor) => TensorData(tensor.Handle);

    // TorchSharp exposes the data pointer only through Tensor.bytes, which also checks and builds a span per call; this
    // export is one call that allocates nothing. It is read for every averaged tensor on every step, returns at once
    // and never calls back into .NET (a failure is caught inside LibTorchSharp), so the GC transition is skipped.
    [LibraryImport("LibTorchSharp", EntryPoint = "THSTensor_data")]
    [SuppressGCTransition]
    private static partial IntPtr TensorData(IntPtr tensor);
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

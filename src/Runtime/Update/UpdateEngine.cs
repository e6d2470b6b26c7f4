using System;
using System.Collections.Generic;
using System.Runtime.Intrinsics.X86;
using System.Threading;
using TorchSharp;
using TorchSharp.Modules;

namespace EmaGen;

/// <summary>
/// Executes updates for one manager. A step is two phases: <see cref="Gather"/> (called by <see cref="GatherVisitor"/>
/// for each parameter slot of the live model) checks the slot and records the parameter's data pointer; only when every
/// slot checked out does <see cref="Apply"/> write. On the CPU the writes are SIMD kernels over raw memory, split
/// across threads for large models: no TorchSharp calls, no managed allocations. Parameters a kernel cannot take
/// (other devices, non-contiguous, unusual dtypes) go through TorchSharp ops instead.
/// </summary>
internal sealed unsafe class UpdateEngine : IPartitionedWork, IDisposable
{
    // Below this many elements an update runs on the calling thread: waking helpers costs more than it saves.
    private const long ParallelThreshold = 1 << 20;
    // Threads take chunks of this many elements (1 MiB of fp32 shadow) from a shared counter: cores that run slower
    // (a busy SMT sibling, a noisy neighbour on a VM) simply take fewer chunks. A multiple of 64 keeps every chunk on
    // a cache-line boundary.
    private const long ChunkElements = 1 << 18;
    private const long PrefetchLimitBytes = 16 << 10;

    private readonly ParameterSlot[] _slots;
    private readonly long[] _slotNumel;
    private readonly int[] _itemOfSlot;
    private readonly ShadowArena _arena;

    // Per averaged parameter ("item"), in visit order.
    private readonly torch.Tensor[] _shadow;
    private readonly IntPtr[] _shadowPointer;
    private readonly long[] _count;
    private readonly KernelKind[] _kernel;
    private readonly torch.ScalarType[] _parameterDType;
    private readonly DeviceType[] _deviceType;
    private readonly torch.Tensor?[] _knownTensor;
    private readonly IntPtr[] _knownPointer;
    private readonly bool[] _rawOk;
    private readonly IntPtr[] _expectedPackedPointer;
    private readonly int[] _groupOfItem;
    private readonly bool[] _groupIntact;
    private readonly IntPtr[] _parameterPointer;
    private readonly torch.Tensor?[] _current;

    // Work list of the current step: either one entry per group (packed) or one per item.
    private readonly IntPtr[] _workShadow;
    private readonly IntPtr[] _workParameter;
    private readonly long[] _workCount;
    private readonly long[] _workStart;
    private readonly KernelKind[] _workKernel;
    private int _workLength;
    private long _workElements;

    private readonly CpuWorkerPool? _pool;
    private readonly Dictionary<(DeviceType, int, torch.ScalarType), (torch.Tensor Weight, double Decay)> _torchWeights = new();
    private int _cursor;
    private int _nextChunk;
    private int _chunkCount;
    private double _decay;

    public UpdateEngine(ParameterSlot[] slots, long[] slotNumel, int[] parameterOfSlot, EmaParameterInfo[] parameters,
        ShadowArena arena, double decay, int threads)
    {
        _slots = slots;
        _slotNumel = slotNumel;
        _arena = arena;
        _decay = decay;

        _itemOfSlot = new int[slots.Length];
        int items = 0;
        for (int s = 0; s < slots.Length; s++)
        {
            int p = parameterOfSlot[s];
            _itemOfSlot[s] = p >= 0 && parameters[p].Tracked ? items++ : -1;
        }
        _shadow = new torch.Tensor[items];
        _shadowPointer = new IntPtr[items];
        _count = new long[items];
        _kernel = new KernelKind[items];
        _parameterDType = new torch.ScalarType[items];
        _deviceType = new DeviceType[items];
        _knownTensor = new torch.Tensor?[items];
        _knownPointer = new IntPtr[items];
        _rawOk = new bool[items];
        _expectedPackedPointer = new IntPtr[items];
        _groupOfItem = new int[items];
        _groupIntact = new bool[arena.Groups.Count];
        _parameterPointer = new IntPtr[items];
        _current = new torch.Tensor?[items];
        for (int s = 0; s < slots.Length; s++)
        {
            int item = _itemOfSlot[s];
            if (item < 0) continue;
            int p = parameterOfSlot[s];
            var info = parameters[p];
            var shadow = arena[p]!;
            _shadow[item] = shadow;
            _count[item] = info.Numel;
            _kernel[item] = KernelKinds.For(info.ShadowDType, info.DType);
            _parameterDType[item] = info.DType;
            _deviceType[item] = info.Device.type;
            _shadowPointer[item] = info.Device.type == DeviceType.CPU ? NativeTensor.DataPointer(shadow) : IntPtr.Zero;
            _groupOfItem[item] = arena.GroupOf(p);
            var group = arena.Groups[_groupOfItem[item]];
            if (group.PackedParameters is { } packed && info.Device.type == DeviceType.CPU)
            {
                _expectedPackedPointer[item] = NativeTensor.DataPointer(packed)
                    + (nint)(arena.OffsetOf(p) * KernelKinds.ParameterElementSize(group.Kernel));
            }
        }

        int workCapacity = Math.Max(items, arena.Groups.Count);
        _workShadow = new IntPtr[workCapacity];
        _workParameter = new IntPtr[workCapacity];
        _workCount = new long[workCapacity];
        _workStart = new long[workCapacity];
        _workKernel = new KernelKind[workCapacity];

        long totalElements = 0;
        foreach (var c in _count) totalElements += c;
        if (threads > 1 && totalElements >= ParallelThreshold) _pool = new CpuWorkerPool(threads);
    }

    public int Threads => _pool?.Parallelism ?? 1;

    /// <summary>The decay the next <see cref="Apply"/> uses (schedules change it per step).</summary>
    public double Decay
    {
        get => _decay;
        set => _decay = value;
    }

    public void BeginGather() => _cursor = 0;

    /// <summary>Checks one visited slot against the recorded layout and remembers where its data is. Writes nothing.</summary>
    public void Gather(string name, torch.Tensor? parameter)
    {
        int slot = _cursor++;
        if (slot >= _slots.Length)
        {
            throw new InvalidOperationException(
                $"The model has more parameter slots than the {_slots.Length} recorded when the EMA manager was built (extra slot '{name}').");
        }
        var recorded = _slots[slot];
        if (!string.Equals(recorded.LocalName, name, StringComparison.Ordinal))
        {
            throw new InvalidOperationException(
                $"The model's parameter slot {slot} is '{name}', but the EMA manager recorded '{recorded.FullName}' there; the module tree changed.");
        }
        if ((parameter is null) != (_slotNumel[slot] < 0))
        {
            throw new InvalidOperationException(
                $"Parameter '{recorded.FullName}' is {(parameter is null ? "now null" : "now present")} in the model, unlike when the EMA manager was built.");
        }
        int item = _itemOfSlot[slot];
        if (item < 0) return;

        var pointer = NativeTensor.DataPointer(parameter!);
        if (!ReferenceEquals(parameter, _knownTensor[item]) || pointer != _knownPointer[item])
        {
            Revalidate(item, slot, parameter!);
            _knownTensor[item] = parameter;
            _knownPointer[item] = pointer;
        }
        _parameterPointer[item] = pointer;
        _current[item] = parameter;
    }

    public void EndGather()
    {
        if (_cursor != _slots.Length)
        {
            throw new InvalidOperationException(
                $"The model has {_cursor} parameter slots, but had {_slots.Length} when the EMA manager was built.");
        }
    }

    /// <summary>Writes the update for the slots gathered last.</summary>
    public void Apply()
    {
        bool allRaw = true;
        Array.Fill(_groupIntact, true);
        for (int item = 0; item < _shadow.Length; item++)
        {
            allRaw &= _rawOk[item];
            int group = _groupOfItem[item];
            _groupIntact[group] &= _rawOk[item] && _expectedPackedPointer[item] != IntPtr.Zero && _expectedPackedPointer[item] == _parameterPointer[item];
        }
        BuildWork();
        if (_workLength > 0)
        {
            if (_pool is not null && _workElements >= ParallelThreshold)
            {
                _nextChunk = 0;
                _chunkCount = (int)((_workElements + ChunkElements - 1) / ChunkElements);
                _pool.Run(this);
            }
            else
            {
                ExecuteRange(0, _workElements);
            }
        }
        if (!allRaw) ApplyThroughTorch();
        Array.Clear(_current);
    }

    /// <summary>One thread's share of a parallel update: chunks taken from the shared counter until none are left.</summary>
    public void Execute(int part, int parts)
    {
        int chunk;
        while ((chunk = Interlocked.Increment(ref _nextChunk) - 1) < _chunkCount)
        {
            long lo = chunk * ChunkElements;
            ExecuteRange(lo, Math.Min(_workElements, lo + ChunkElements));
        }
    }

    // Elements [lo, hi) of the work list, counted across its entries in order.
    private void ExecuteRange(long lo, long hi)
    {
        int first = Array.BinarySearch(_workStart, 0, _workLength, lo);
        if (first < 0) first = ~first - 1;
        for (int i = Math.Max(0, first); i < _workLength && _workStart[i] < hi; i++)
        {
            if (i + 1 < _workLength) PrefetchSmall(i + 1);
            long start = _workStart[i];
            long count = _workCount[i];
            long from = Math.Max(lo, start);
            long to = Math.Min(hi, start + count);
            if (from < to)
            {
                var kind = _workKernel[i];
                long skip = from - start;
                EmaKernels.Run(kind,
                    (byte*)_workShadow[i] + skip * KernelKinds.ShadowElementSize(kind),
                    (byte*)_workParameter[i] + skip * KernelKinds.ParameterElementSize(kind),
                    to - from, _decay);
            }
        }
    }

    // Small tensors live far apart in memory, and each is too short for the hardware prefetcher to get going; asking
    // for the next small one while this one is processed overlaps its cache misses with useful work.
    private void PrefetchSmall(int i)
    {
        long bytes = _workCount[i] * KernelKinds.ParameterElementSize(_workKernel[i]);
        if (bytes > PrefetchLimitBytes || !Sse.IsSupported) return;
        byte* p = (byte*)_workParameter[i];
        byte* s = (byte*)_workShadow[i];
        long shadowBytes = _workCount[i] * KernelKinds.ShadowElementSize(_workKernel[i]);
        for (long offset = 0; offset < bytes; offset += 64) Sse.Prefetch0(p + offset);
        for (long offset = 0; offset < shadowBytes; offset += 64) Sse.Prefetch0(s + offset);
    }

    // One entry per packed group whose parameters all still alias its flat buffer (padding between slices is zero in
    // both buffers and stays zero, so the group is one contiguous range), and one entry per remaining item.
    private void BuildWork()
    {
        _workLength = 0;
        _workElements = 0;
        var groups = _arena.Groups;
        for (int g = 0; g < groups.Count; g++)
        {
            if (!_groupIntact[g]) continue;
            var group = groups[g];
            Add(NativeTensor.DataPointer(group.Shadow), NativeTensor.DataPointer(group.PackedParameters!), group.Elements, group.Kernel);
        }
        for (int item = 0; item < _shadow.Length; item++)
        {
            if (!_rawOk[item] || _groupIntact[_groupOfItem[item]]) continue;
            Add(_shadowPointer[item], _parameterPointer[item], _count[item], _kernel[item]);
        }
    }

    private void Add(IntPtr shadow, IntPtr parameter, long count, KernelKind kind)
    {
        _workShadow[_workLength] = shadow;
        _workParameter[_workLength] = parameter;
        _workCount[_workLength] = count;
        _workStart[_workLength] = _workElements;
        _workKernel[_workLength] = kind;
        _workElements += count;
        _workLength++;
    }

    // Devices other than the CPU, non-contiguous parameters and dtype pairs without a kernel. No host synchronisation:
    // the weight is a cached 0-dim tensor on the shadow's device, never read back.
    private void ApplyThroughTorch()
    {
        using var _ = torch.no_grad();
        if (TryApplyPackedThroughTorch()) return;
        for (int item = 0; item < _shadow.Length; item++)
        {
            if (_rawOk[item]) continue;
            var shadow = _shadow[item];
            var parameter = _current[item]!;
            if (!KernelKinds.IsFloatingPoint(shadow.dtype))
            {
                InPlace.Release(shadow.copy_(parameter), shadow);
            }
            else if (shadow.dtype == parameter.dtype)
            {
                InPlace.Release(shadow.lerp_(parameter, WeightFor(shadow)), shadow);
            }
            else
            {
                // Mixed dtypes: add_ promotes the lower-precision operand per element.
                InPlace.Release(shadow.mul_(_decay), shadow);
                InPlace.Release(shadow.add_(parameter, alpha: 1.0 - _decay), shadow);
            }
        }
    }

    private bool TryApplyPackedThroughTorch()
    {
        foreach (var group in _arena.Groups)
        {
            if (group.PackedParameters is null || group.Device.type == DeviceType.CPU) return false;
        }
        // Off the CPU the data pointers are not compared; a packed model keeps its layout unless the user re-points
        // parameters, which EmaManager documents as unpacking (a new manager re-packs).
        foreach (var group in _arena.Groups)
        {
            var shadow = group.Shadow;
            var flat = group.PackedParameters!;
            if (shadow.dtype == flat.dtype)
            {
                InPlace.Release(shadow.lerp_(flat, WeightFor(shadow)), shadow);
            }
            else
            {
                InPlace.Release(shadow.mul_(_decay), shadow);
                InPlace.Release(shadow.add_(flat, alpha: 1.0 - _decay), shadow);
            }
        }
        return true;
    }

    // lerp_ takes its weight as a tensor of the shadow's dtype and device; a double would build a new one per call.
    // When a schedule changes the decay the cached tensor is refilled on its device: no new tensor, no host sync.
    private torch.Tensor WeightFor(torch.Tensor shadow)
    {
        var key = (shadow.device_type, shadow.device_index, shadow.dtype);
        if (!_torchWeights.TryGetValue(key, out var cached))
        {
            var created = torch.tensor(1.0 - _decay, shadow.dtype, shadow.device).DetachFromDisposeScope();
            _torchWeights[key] = (created, _decay);
            return created;
        }
        if (cached.Decay != _decay)
        {
            InPlace.Release(cached.Weight.fill_(1.0 - _decay), cached.Weight);
            _torchWeights[key] = (cached.Weight, _decay);
        }
        return cached.Weight;
    }

    private void Revalidate(int item, int slot, torch.Tensor parameter)
    {
        var name = _slots[slot].FullName;
        long numel = parameter.numel();
        if (numel != _count[item])
        {
            throw new InvalidOperationException(
                $"Parameter '{name}' has {numel} elements, but {_count[item]} when the EMA manager was built.");
        }
        if (parameter.dtype != _parameterDType[item])
        {
            throw new InvalidOperationException(
                $"Parameter '{name}' is {parameter.dtype}, but was {_parameterDType[item]} when the EMA manager was built; build a new manager after changing dtypes.");
        }
        if (parameter.device_type != _deviceType[item])
        {
            throw new InvalidOperationException(
                $"Parameter '{name}' is on {parameter.device_type}, but was on {_deviceType[item]} when the EMA manager was built; build a new manager after moving the model.");
        }
        _rawOk[item] = _deviceType[item] == DeviceType.CPU && _kernel[item] != KernelKind.None && parameter.is_contiguous();
    }

    public void Dispose()
    {
        _pool?.Dispose();
        foreach (var (w, _) in _torchWeights.Values) w.Dispose();
    }
}

/// <summary>Hands each visited slot to <see cref="UpdateEngine.Gather"/>; names are never concatenated.</summary>
internal readonly struct GatherVisitor : IEmaParameterVisitor
{
    private readonly UpdateEngine _engine;

    public GatherVisitor(UpdateEngine engine) => _engine = engine;

    public void EnterModule(string name, bool ignored) { }

    public void EnterIndex(int index) { }

    public void ExitModule() { }

    public void Parameter(string name, Parameter? parameter, bool ignored, int shardDim) => _engine.Gather(name, parameter);

    public void Buffer(string name, torch.Tensor? buffer, bool ignored) => _engine.Gather(name, buffer);
}

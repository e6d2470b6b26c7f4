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
/// With several profiles (one arena each, all laid out alike) every active profile is written in the same pass: fp32 and
/// bf16 parameters feed two shadows per load (a pair kernel); beyond that, or for other dtypes, the work is cut into
/// blocks small enough that parameters read for the first profiles are still in L1 for the others. Either way the
/// parameters cross the memory bus once per step whatever the number of profiles.
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
    // Elements per block when several profiles share a pass: 8 KiB of fp32 parameters, re-read from L1 per profile.
    private const long FuseBlockElements = 2048;

    private readonly ParameterSlot[] _slots;
    private readonly long[] _slotNumel;
    private readonly int[] _itemOfSlot;
    private readonly ShadowArena[] _arenas;
    private readonly int _items;

    // Per profile, then per averaged parameter ("item") in visit order.
    private readonly torch.Tensor[][] _shadow;
    private readonly IntPtr[][] _shadowPointer;
    private readonly double[] _decays;
    private readonly bool[] _active;
    private readonly int[] _activeProfiles;
    private int _activeCount;

    // Per averaged parameter ("item"), in visit order.
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

    // Work list of the current step: either one entry per group (packed) or one per item; shadows per profile.
    private readonly IntPtr[][] _workShadow;
    private readonly IntPtr[] _workParameter;
    private readonly long[] _workCount;
    private readonly long[] _workStart;
    private readonly KernelKind[] _workKernel;
    private int _workLength;
    private long _workElements;

    private readonly CpuWorkerPool? _pool;
    private readonly Dictionary<(int, DeviceType, int, torch.ScalarType), (torch.Tensor Weight, double Decay)> _torchWeights = new();
    private int _cursor;
    private int _nextChunk;
    private int _chunkCount;

    // arenas: one per profile, built from the same parameters; only the first may pack them.
    public UpdateEngine(ParameterSlot[] slots, long[] slotNumel, int[] parameterOfSlot, EmaParameterInfo[] parameters,
        ShadowArena[] arenas, int threads)
    {
        _slots = slots;
        _slotNumel = slotNumel;
        _arenas = arenas;
        var arena = arenas[0];
        int profiles = arenas.Length;
        _decays = new double[profiles];
        _active = new bool[profiles];
        _activeProfiles = new int[profiles];

        _itemOfSlot = new int[slots.Length];
        int items = 0;
        for (int s = 0; s < slots.Length; s++)
        {
            int p = parameterOfSlot[s];
            _itemOfSlot[s] = p >= 0 && parameters[p].Tracked ? items++ : -1;
        }
        _items = items;
        _shadow = new torch.Tensor[profiles][];
        _shadowPointer = new IntPtr[profiles][];
        for (int k = 0; k < profiles; k++)
        {
            _shadow[k] = new torch.Tensor[items];
            _shadowPointer[k] = new IntPtr[items];
        }
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
            for (int k = 0; k < profiles; k++)
            {
                var shadow = arenas[k][p]!;
                _shadow[k][item] = shadow;
                _shadowPointer[k][item] = info.Device.type == DeviceType.CPU ? NativeTensor.DataPointer(shadow) : IntPtr.Zero;
            }
            _count[item] = info.Numel;
            _kernel[item] = KernelKinds.For(info.ShadowDType, info.DType);
            _parameterDType[item] = info.DType;
            _deviceType[item] = info.Device.type;
            _groupOfItem[item] = arena.GroupOf(p);
            var group = arena.Groups[_groupOfItem[item]];
            if (group.PackedParameters is { } packed && info.Device.type == DeviceType.CPU)
            {
                _expectedPackedPointer[item] = NativeTensor.DataPointer(packed)
                    + (nint)(arena.OffsetOf(p) * KernelKinds.ParameterElementSize(group.Kernel));
            }
        }

        int workCapacity = Math.Max(items, arena.Groups.Count);
        _workShadow = new IntPtr[profiles][];
        for (int k = 0; k < profiles; k++) _workShadow[k] = new IntPtr[workCapacity];
        _workParameter = new IntPtr[workCapacity];
        _workCount = new long[workCapacity];
        _workStart = new long[workCapacity];
        _workKernel = new KernelKind[workCapacity];

        long totalElements = 0;
        foreach (var c in _count) totalElements += c;
        if (threads > 1 && totalElements >= ParallelThreshold) _pool = new CpuWorkerPool(threads);
    }

    public int Threads => _pool?.Parallelism ?? 1;

    /// <summary>Whether the next <see cref="Apply"/> writes profile <paramref name="profile"/>, and with which decay (schedules change it per step).</summary>
    public void SetProfile(int profile, bool active, double decay)
    {
        _active[profile] = active;
        _decays[profile] = decay;
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
        _activeCount = 0;
        for (int k = 0; k < _active.Length; k++)
        {
            if (_active[k]) _activeProfiles[_activeCount++] = k;
        }
        if (_activeCount == 0)
        {
            Array.Clear(_current);
            return;
        }
        bool allRaw = true;
        Array.Fill(_groupIntact, true);
        for (int item = 0; item < _items; item++)
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
            long from = Math.Max(lo, start);
            long to = Math.Min(hi, start + _workCount[i]);
            if (from >= to) continue;
            var kind = _workKernel[i];
            int shadowSize = KernelKinds.ShadowElementSize(kind);
            int parameterSize = KernelKinds.ParameterElementSize(kind);
            byte* parameter = (byte*)_workParameter[i];
            if (_activeCount == 1)
            {
                int k = _activeProfiles[0];
                EmaKernels.Run(kind, (byte*)_workShadow[k][i] + (from - start) * shadowSize, parameter + (from - start) * parameterSize, to - from, _decays[k]);
                continue;
            }
            bool pairs = EmaKernels.HasPairKernel(kind);
            // Two profiles with a pair kernel: one pass, every stream sequential. Otherwise blocks, so the parameters
            // read for the first profile (or pair) are still in L1 for the rest.
            long blockElements = pairs && _activeCount == 2 ? to - from : FuseBlockElements;
            for (long block = from; block < to; block += blockElements)
            {
                long n = Math.Min(blockElements, to - block);
                long skip = block - start;
                byte* p = parameter + skip * parameterSize;
                int a = 0;
                for (; pairs && a + 1 < _activeCount; a += 2)
                {
                    int k0 = _activeProfiles[a], k1 = _activeProfiles[a + 1];
                    EmaKernels.RunPair(kind, (byte*)_workShadow[k0][i] + skip * shadowSize, (byte*)_workShadow[k1][i] + skip * shadowSize, p, n, _decays[k0], _decays[k1]);
                }
                for (; a < _activeCount; a++)
                {
                    int k = _activeProfiles[a];
                    EmaKernels.Run(kind, (byte*)_workShadow[k][i] + skip * shadowSize, p, n, _decays[k]);
                }
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
        long shadowBytes = _workCount[i] * KernelKinds.ShadowElementSize(_workKernel[i]);
        for (long offset = 0; offset < bytes; offset += 64) Sse.Prefetch0(p + offset);
        for (int a = 0; a < _activeCount; a++)
        {
            byte* s = (byte*)_workShadow[_activeProfiles[a]][i];
            for (long offset = 0; offset < shadowBytes; offset += 64) Sse.Prefetch0(s + offset);
        }
    }

    // One entry per packed group whose parameters all still alias its flat buffer (padding between slices is zero in
    // both buffers and stays zero, so the group is one contiguous range), and one entry per remaining item.
    private void BuildWork()
    {
        _workLength = 0;
        _workElements = 0;
        var groups = _arenas[0].Groups;
        for (int g = 0; g < groups.Count; g++)
        {
            if (!_groupIntact[g]) continue;
            var group = groups[g];
            for (int a = 0; a < _activeCount; a++)
            {
                int k = _activeProfiles[a];
                _workShadow[k][_workLength] = NativeTensor.DataPointer(_arenas[k].Groups[g].Shadow);
            }
            Add(NativeTensor.DataPointer(group.PackedParameters!), group.Elements, group.Kernel);
        }
        for (int item = 0; item < _items; item++)
        {
            if (!_rawOk[item] || _groupIntact[_groupOfItem[item]]) continue;
            for (int a = 0; a < _activeCount; a++)
            {
                int k = _activeProfiles[a];
                _workShadow[k][_workLength] = _shadowPointer[k][item];
            }
            Add(_parameterPointer[item], _count[item], _kernel[item]);
        }
    }

    private void Add(IntPtr parameter, long count, KernelKind kind)
    {
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
        for (int a = 0; a < _activeCount; a++)
        {
            int k = _activeProfiles[a];
            if (TryApplyPackedThroughTorch(k)) continue;
            double decay = _decays[k];
            for (int item = 0; item < _items; item++)
            {
                if (_rawOk[item]) continue;
                var shadow = _shadow[k][item];
                var parameter = _current[item]!;
                if (!KernelKinds.IsFloatingPoint(shadow.dtype))
                {
                    InPlace.Release(shadow.copy_(parameter), shadow);
                }
                else if (shadow.dtype == parameter.dtype)
                {
                    InPlace.Release(shadow.lerp_(parameter, WeightFor(k, shadow)), shadow);
                }
                else
                {
                    // Mixed dtypes: add_ promotes the lower-precision operand per element.
                    InPlace.Release(shadow.mul_(decay), shadow);
                    InPlace.Release(shadow.add_(parameter, alpha: 1.0 - decay), shadow);
                }
            }
        }
    }

    private bool TryApplyPackedThroughTorch(int profile)
    {
        var packedGroups = _arenas[0].Groups;
        foreach (var group in packedGroups)
        {
            if (group.PackedParameters is null || group.Device.type == DeviceType.CPU) return false;
        }
        // Off the CPU the data pointers are not compared; a packed model keeps its layout unless the user re-points
        // parameters, which EmaManager documents as unpacking (a new manager re-packs).
        double decay = _decays[profile];
        for (int g = 0; g < packedGroups.Count; g++)
        {
            var shadow = _arenas[profile].Groups[g].Shadow;
            var flat = packedGroups[g].PackedParameters!;
            if (shadow.dtype == flat.dtype)
            {
                InPlace.Release(shadow.lerp_(flat, WeightFor(profile, shadow)), shadow);
            }
            else
            {
                InPlace.Release(shadow.mul_(decay), shadow);
                InPlace.Release(shadow.add_(flat, alpha: 1.0 - decay), shadow);
            }
        }
        return true;
    }

    // lerp_ takes its weight as a tensor of the shadow's dtype and device; a double would build a new one per call.
    // When a schedule changes the decay the cached tensor is refilled on its device: no new tensor, no host sync.
    private torch.Tensor WeightFor(int profile, torch.Tensor shadow)
    {
        double decay = _decays[profile];
        var key = (profile, shadow.device_type, shadow.device_index, shadow.dtype);
        if (!_torchWeights.TryGetValue(key, out var cached))
        {
            var created = torch.tensor(1.0 - decay, shadow.dtype, shadow.device).DetachFromDisposeScope();
            _torchWeights[key] = (created, decay);
            return created;
        }
        if (cached.Decay != decay)
        {
            InPlace.Release(cached.Weight.fill_(1.0 - decay), cached.Weight);
            _torchWeights[key] = (cached.Weight, decay);
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

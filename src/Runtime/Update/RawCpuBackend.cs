using System;
using System.Linq;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// The CPU backend: raw memory, SIMD kernels, no TorchSharp calls and no managed allocation per step. Queued units
/// (a packed group, or one averaged box) become entries of one list, executed in 1 MiB chunks by the calling thread
/// and, for large steps, a <see cref="CpuWorkerPool"/>'s helpers taking chunks from a shared counter (cores that run
/// slower simply take fewer). Every written profile is written in the same pass: fp32 and bf16 parameters feed two
/// shadows per load (pair kernels); beyond that, or for other dtypes, entries are cut into L1-sized blocks, so
/// parameters cross the memory bus once per step whatever the number of profiles. This file queues and runs; the
/// execution is in <c>RawCpuBackend.Execution.cs</c>, the kernels in <c>RawCpuBackend.Kernels.cs</c>.
/// </summary>
internal sealed unsafe partial class RawCpuBackend : IUpdateBackend, IPartitionedWork
{
    /// <summary>Below this many elements a step runs on the calling thread: waking helpers costs more than it saves.</summary>
    public const long ParallelThreshold = 1 << 20;

    private readonly ShadowItem[] _items;
    private readonly LiveSlots _live;
    private readonly CpuWorkerPool? _pool;
    // Bind time, per profile then per group or per item: the shadow's data (shadows are never re-pointed); per group:
    // the packed parameters' data (zero when unpacked), its elements and kernel.
    private readonly IntPtr[][] _groupShadow;
    private readonly IntPtr[][] _itemShadow;
    private readonly IntPtr[] _groupParameters;
    private readonly long[] _groupElements;
    private readonly KernelKind[] _groupKernel;

    // The step's entries: which group or item each is, and (filled in by Run for the written profiles) its shadows.
    private readonly bool[] _entryIsGroup;
    private readonly int[] _entrySource;
    private readonly IntPtr[][] _shadow;
    private readonly IntPtr[] _parameter;
    private readonly long[] _count;
    private readonly long[] _start;
    private readonly KernelKind[] _kernel;
    private readonly double[] _decays;
    private readonly int[] _activeProfiles;
    private int _activeCount;
    private int _length;
    private long _elements;
    private int _nextChunk;
    private int _chunkCount;
    // The kernels' mode (AllowMode, GuardMode, AllowRmsMode, GuardRmsMode) and, per part of the step (a chunk), each
    // profile's tally and the items it named (non-finite first, then healed).
    private int _mode;
    private KernelStats[] _stats;
    private int[] _names;
    private int[] _nameCount;
    // Per group: its items' offsets in the flat buffer (ascending) and the items, to name a flagged element.
    private readonly long[][] _groupItemOffsets;
    private readonly int[][] _groupItems;

    public RawCpuBackend(ShadowArena[] arenas, ShadowItem[] items, LiveSlots live, CpuWorkerPool? pool, bool guard, bool rms)
    {
        _mode = ModeOf(guard, rms);
        _stats = new KernelStats[arenas.Length];
        _names = new int[2 * NamesPerPart];
        _nameCount = new int[2];
        _items = items;
        _live = live;
        _pool = pool;
        var groups = arenas[0].Groups;
        int profiles = arenas.Length;
        _groupShadow = new IntPtr[profiles][];
        _itemShadow = new IntPtr[profiles][];
        for (int k = 0; k < profiles; k++)
        {
            _groupShadow[k] = new IntPtr[groups.Count];
            for (int g = 0; g < groups.Count; g++) _groupShadow[k][g] = NativeTensor.CpuDataPointer(arenas[k].Groups[g].Shadow);
            _itemShadow[k] = new IntPtr[items.Length];
            for (int i = 0; i < items.Length; i++) _itemShadow[k][i] = NativeTensor.CpuDataPointer(arenas[k][i]!);
        }
        _groupParameters = new IntPtr[groups.Count];
        _groupElements = new long[groups.Count];
        _groupKernel = new KernelKind[groups.Count];
        for (int g = 0; g < groups.Count; g++)
        {
            if (groups[g].PackedParameters is { } packed) _groupParameters[g] = NativeTensor.CpuDataPointer(packed);
            _groupElements[g] = groups[g].Elements;
            _groupKernel[g] = KernelFor(groups[g].ShadowDType, groups[g].ParameterDType);
        }
        int capacity = Math.Max(items.Length, groups.Count);
        _entryIsGroup = new bool[capacity];
        _entrySource = new int[capacity];
        _shadow = new IntPtr[profiles][];
        for (int k = 0; k < profiles; k++) _shadow[k] = new IntPtr[capacity];
        _parameter = new IntPtr[capacity];
        _count = new long[capacity];
        _start = new long[capacity];
        _kernel = new KernelKind[capacity];
        _decays = new double[profiles];
        _activeProfiles = new int[profiles];
        var members = new System.Collections.Generic.List<int>[groups.Count];
        for (int g = 0; g < groups.Count; g++) members[g] = new();
        for (int i = 0; i < items.Length; i++)
        {
            if (arenas[0].GroupOf(i) is int g && g >= 0) members[g].Add(i);
        }
        _groupItems = new int[groups.Count][];
        _groupItemOffsets = new long[groups.Count][];
        for (int g = 0; g < groups.Count; g++)
        {
            _groupItems[g] = members[g].OrderBy(i => arenas[0].OffsetOf(i)).ToArray();
            _groupItemOffsets[g] = _groupItems[g].Select(i => arenas[0].OffsetOf(i)).ToArray();
        }
    }

    /// <summary>
    /// Benchmark-only: switches the guard (and distance) of the kernels over the same buffers, so that the guard's cost
    /// is measured without the placement of two models' memory in the figure.
    /// </summary>
    internal void SetModeForBenchmark(bool guard, bool rms) => _mode = ModeOf(guard, rms);

    private static int ModeOf(bool guard, bool rms) => (guard ? 1 : 0) + (rms ? 2 : 0);

    public void QueueGroup(int group) => Append(true, group, _groupParameters[group], _groupElements[group], _groupKernel[group]);

    public void QueueTensor(int item)
    {
        ref readonly var it = ref _items[item];
        Append(false, item, _live.Pointer(it.Slot) + (nint)it.ParameterOffsetBytes, it.Numel, it.Kernel);
    }

    private void Append(bool group, int source, IntPtr parameter, long count, KernelKind kind)
    {
        _entryIsGroup[_length] = group;
        _entrySource[_length] = source;
        _parameter[_length] = parameter;
        _count[_length] = count;
        _start[_length] = _elements;
        _kernel[_length] = kind;
        _elements += count;
        _length++;
    }

    /// <summary>
    /// Executes the queued entries for every profile whose decay is a number, on the pool's threads too when the step
    /// is large, and adds what the guard found (and the distances) to <paramref name="tally"/>.
    /// </summary>
    public void Run(ReadOnlySpan<double> decays, StepTally tally)
    {
        try
        {
            _activeCount = 0;
            for (int k = 0; k < decays.Length; k++)
            {
                _decays[k] = decays[k];
                if (!double.IsNaN(decays[k])) _activeProfiles[_activeCount++] = k;
            }
            if (_length == 0 || _activeCount == 0) return;
            for (int e = 0; e < _length; e++)
            {
                var table = _entryIsGroup[e] ? _groupShadow : _itemShadow;
                for (int a = 0; a < _activeCount; a++)
                {
                    int k = _activeProfiles[a];
                    _shadow[k][e] = table[k][_entrySource[e]];
                }
            }
            int parts = 1;
            if (_pool is not null && _elements >= ParallelThreshold)
            {
                _nextChunk = 0;
                _chunkCount = parts = (int)((_elements + ChunkElements - 1) / ChunkElements);
                EnsureParts(parts);
                _pool.Run(this);
            }
            else
            {
                ExecuteRange(0, _elements, 0);
            }
            Collect(parts, tally);
        }
        finally
        {
            _length = 0;
            _elements = 0;
        }
    }

    /// <summary>The CPU kernel for a (shadow dtype, parameter dtype) pair; <see cref="KernelKind.None"/> sends it to TorchSharp ops.</summary>
    public static KernelKind KernelFor(torch.ScalarType shadow, torch.ScalarType parameter) => (shadow, parameter) switch
    {
        (torch.ScalarType.Float32, torch.ScalarType.Float32) => KernelKind.Float32,
        (torch.ScalarType.Float64, torch.ScalarType.Float64) => KernelKind.Float64,
        (torch.ScalarType.Float32, torch.ScalarType.BFloat16) => KernelKind.Float32FromBFloat16,
        (torch.ScalarType.Float32, torch.ScalarType.Float16) => KernelKind.Float32FromFloat16,
        (torch.ScalarType.BFloat16, torch.ScalarType.BFloat16) => KernelKind.BFloat16,
        (torch.ScalarType.Float16, torch.ScalarType.Float16) => KernelKind.Float16,
        _ when shadow == parameter => parameter switch
        {
            torch.ScalarType.Bool or torch.ScalarType.Byte or torch.ScalarType.Int8 => KernelKind.Copy1,
            torch.ScalarType.Int16 => KernelKind.Copy2,
            torch.ScalarType.Int32 => KernelKind.Copy4,
            torch.ScalarType.Int64 => KernelKind.Copy8,
            _ => KernelKind.None,
        },
        _ => KernelKind.None,
    };

    public static int ShadowElementSize(KernelKind kind) => kind switch
    {
        KernelKind.Float64 or KernelKind.Copy8 => 8,
        KernelKind.BFloat16 or KernelKind.Float16 or KernelKind.Copy2 => 2,
        KernelKind.Copy1 => 1,
        _ => 4,
    };

    public static int ParameterElementSize(KernelKind kind) => kind switch
    {
        KernelKind.Float32 or KernelKind.Copy4 => 4,
        KernelKind.Float64 or KernelKind.Copy8 => 8,
        KernelKind.Copy1 => 1,
        _ => 2,
    };
}

using System;
using System.Runtime.Intrinsics.X86;
using System.Threading;

namespace EmaGen;

/// <summary>
/// The raw-memory part of one update step: a list of entries (a parameter range, its kernel and one shadow per profile)
/// executed in 1 MiB chunks by the calling thread and, for large steps, a <see cref="CpuWorkerPool"/>'s helpers taking
/// chunks from a shared counter (cores that run slower simply take fewer). Every active profile is written in the same
/// pass: fp32 and bf16 parameters feed two shadows per load (pair kernels); beyond that, or for other dtypes, entries
/// are cut into L1-sized blocks, so parameters cross the memory bus once per step whatever the number of profiles.
/// Shared by the dense and the sharded manager; allocates nothing per step.
/// </summary>
internal sealed unsafe class UpdateWorkList : IPartitionedWork
{
    /// <summary>Below this many elements a step runs on the calling thread: waking helpers costs more than it saves.</summary>
    public const long ParallelThreshold = 1 << 20;

    // 1 MiB of fp32 shadow per chunk; a multiple of 64 keeps every chunk on a cache-line boundary.
    private const long ChunkElements = 1 << 18;
    private const long PrefetchLimitBytes = 16 << 10;
    // Elements per block when several profiles share a pass: 8 KiB of fp32 parameters, re-read from L1 per profile.
    private const long FuseBlockElements = 2048;

    private readonly IntPtr[][] _shadow;
    private readonly IntPtr[] _parameter;
    private readonly long[] _count;
    private readonly long[] _start;
    private readonly KernelKind[] _kernel;
    private readonly bool[] _active;
    private readonly double[] _decays;
    private readonly int[] _activeProfiles;
    private int _activeCount;
    private int _length;
    private long _elements;
    private int _nextChunk;
    private int _chunkCount;

    public UpdateWorkList(int profiles, int capacity)
    {
        _shadow = new IntPtr[profiles][];
        for (int k = 0; k < profiles; k++) _shadow[k] = new IntPtr[capacity];
        _parameter = new IntPtr[capacity];
        _count = new long[capacity];
        _start = new long[capacity];
        _kernel = new KernelKind[capacity];
        _active = new bool[profiles];
        _decays = new double[profiles];
        _activeProfiles = new int[profiles];
    }

    /// <summary>Number of profiles the current step writes; <see cref="ActiveProfile"/> lists them in ascending order.</summary>
    public int ActiveCount => _activeCount;

    public int ActiveProfile(int index) => _activeProfiles[index];

    public double DecayOf(int profile) => _decays[profile];

    /// <summary>Whether the next step writes profile <paramref name="profile"/>, and with which decay.</summary>
    public void SetProfile(int profile, bool active, double decay)
    {
        _active[profile] = active;
        _decays[profile] = decay;
    }

    /// <summary>Starts a step: lists the active profiles and empties the entries. Returns the number of active profiles.</summary>
    public int BeginStep()
    {
        _activeCount = 0;
        for (int k = 0; k < _active.Length; k++)
        {
            if (_active[k]) _activeProfiles[_activeCount++] = k;
        }
        _length = 0;
        _elements = 0;
        return _activeCount;
    }

    /// <summary>
    /// Appends an entry: <paramref name="count"/> elements at <paramref name="parameter"/>, written into
    /// <paramref name="shadows"/>[k][<paramref name="index"/>] for every active profile k (the callers keep their shadow
    /// pointers per profile, then per group, tensor or box).
    /// </summary>
    public void Add(IntPtr[][] shadows, int index, IntPtr parameter, long count, KernelKind kind)
    {
        for (int a = 0; a < _activeCount; a++)
        {
            int k = _activeProfiles[a];
            _shadow[k][_length] = shadows[k][index];
        }
        _parameter[_length] = parameter;
        _count[_length] = count;
        _start[_length] = _elements;
        _kernel[_length] = kind;
        _elements += count;
        _length++;
    }

    /// <summary>Executes the entries, on <paramref name="pool"/>'s threads too when the step is large.</summary>
    public void Run(CpuWorkerPool? pool)
    {
        if (_length == 0 || _activeCount == 0) return;
        if (pool is not null && _elements >= ParallelThreshold)
        {
            _nextChunk = 0;
            _chunkCount = (int)((_elements + ChunkElements - 1) / ChunkElements);
            pool.Run(this);
        }
        else
        {
            ExecuteRange(0, _elements);
        }
    }

    /// <summary>One thread's share of a parallel step: chunks taken from the shared counter until none are left.</summary>
    public void Execute(int part, int parts)
    {
        int chunk;
        while ((chunk = Interlocked.Increment(ref _nextChunk) - 1) < _chunkCount)
        {
            long lo = chunk * ChunkElements;
            ExecuteRange(lo, Math.Min(_elements, lo + ChunkElements));
        }
    }

    // Elements [lo, hi) of the list, counted across its entries in order.
    private void ExecuteRange(long lo, long hi)
    {
        int first = Array.BinarySearch(_start, 0, _length, lo);
        if (first < 0) first = ~first - 1;
        for (int i = Math.Max(0, first); i < _length && _start[i] < hi; i++)
        {
            if (i + 1 < _length) PrefetchSmall(i + 1);
            long start = _start[i];
            long from = Math.Max(lo, start);
            long to = Math.Min(hi, start + _count[i]);
            if (from >= to) continue;
            var kind = _kernel[i];
            int shadowSize = KernelKinds.ShadowElementSize(kind);
            int parameterSize = KernelKinds.ParameterElementSize(kind);
            byte* parameter = (byte*)_parameter[i];
            if (_activeCount == 1)
            {
                int k = _activeProfiles[0];
                EmaKernels.Run(kind, (byte*)_shadow[k][i] + (from - start) * shadowSize, parameter + (from - start) * parameterSize, to - from, _decays[k]);
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
                    EmaKernels.RunPair(kind, (byte*)_shadow[k0][i] + skip * shadowSize, (byte*)_shadow[k1][i] + skip * shadowSize, p, n, _decays[k0], _decays[k1]);
                }
                for (; a < _activeCount; a++)
                {
                    int k = _activeProfiles[a];
                    EmaKernels.Run(kind, (byte*)_shadow[k][i] + skip * shadowSize, p, n, _decays[k]);
                }
            }
        }
    }

    // Small tensors live far apart in memory, and each is too short for the hardware prefetcher to get going; asking
    // for the next small one while this one is processed overlaps its cache misses with useful work.
    private void PrefetchSmall(int i)
    {
        long bytes = _count[i] * KernelKinds.ParameterElementSize(_kernel[i]);
        if (bytes > PrefetchLimitBytes || !Sse.IsSupported) return;
        byte* p = (byte*)_parameter[i];
        long shadowBytes = _count[i] * KernelKinds.ShadowElementSize(_kernel[i]);
        for (long offset = 0; offset < bytes; offset += 64) Sse.Prefetch0(p + offset);
        for (int a = 0; a < _activeCount; a++)
        {
            byte* s = (byte*)_shadow[_activeProfiles[a]][i];
            for (long offset = 0; offset < shadowBytes; offset += 64) Sse.Prefetch0(s + offset);
        }
    }
}

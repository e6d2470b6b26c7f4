using System;
using System.Runtime.Intrinsics.X86;
using System.Threading;

namespace EmaGen;

// Executing the step's entries: chunks of the list on the caller and the pool's helpers, every written profile per
// entry in one pass over the parameters.
internal sealed unsafe partial class RawCpuBackend
{
    // 1 MiB of fp32 shadow per chunk; a multiple of 64 keeps every chunk on a cache-line boundary.
    private const long ChunkElements = 1 << 18;
    private const long PrefetchLimitBytes = 16 << 10;
    // Elements per block when several profiles share a pass: 8 KiB of fp32 parameters, re-read from L1 per profile.
    private const long FuseBlockElements = 2048;

    /// <summary>One thread's share of a parallel step: chunks taken from the shared counter until none are left.</summary>
    public void Execute(int part, int parts)
    {
        int chunk;
        while ((chunk = Interlocked.Increment(ref _nextChunk) - 1) < _chunkCount)
        {
            long lo = chunk * ChunkElements;
            ExecuteRange(lo, Math.Min(_elements, lo + ChunkElements), chunk);
        }
    }

    // Elements [lo, hi) of the list, counted across its entries in order, tallied as part `part` (a chunk: its tallies
    // are merged in chunk order, so the report does not depend on which thread took which chunk).
    private void ExecuteRange(long lo, long hi, int part)
    {
        switch (_mode)
        {
            case 0: ExecuteRange<AllowMode>(lo, hi, part); break;
            case 1: ExecuteRange<GuardMode>(lo, hi, part); break;
            case 2: ExecuteRange<AllowRmsMode>(lo, hi, part); break;
            default: ExecuteRange<GuardRmsMode>(lo, hi, part); break;
        }
    }

    private void ExecuteRange<TMode>(long lo, long hi, int part) where TMode : struct, IKernelMode
    {
        int profiles = _decays.Length;
        for (int a = 0; a < _activeCount; a++) _stats[part * profiles + _activeProfiles[a]].Reset(this, part);
        _nameCount[2 * part] = _nameCount[2 * part + 1] = 0;
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
            int shadowSize = ShadowElementSize(kind);
            int parameterSize = ParameterElementSize(kind);
            byte* parameter = (byte*)_parameter[i];
            if (_activeCount == 1)
            {
                int k = _activeProfiles[0];
                RunKernel<TMode>(kind, (byte*)_shadow[k][i] + (from - start) * shadowSize, parameter + (from - start) * parameterSize, to - from, _decays[k],
                    ref _stats[part * profiles + k], from);
                continue;
            }
            bool pairs = HasPairKernel(kind);
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
                    RunPairKernel<TMode>(kind, (byte*)_shadow[k0][i] + skip * shadowSize, (byte*)_shadow[k1][i] + skip * shadowSize, p, n, _decays[k0], _decays[k1],
                        ref _stats[part * profiles + k0], ref _stats[part * profiles + k1], block);
                }
                for (; a < _activeCount; a++)
                {
                    int k = _activeProfiles[a];
                    RunKernel<TMode>(kind, (byte*)_shadow[k][i] + skip * shadowSize, p, n, _decays[k], ref _stats[part * profiles + k], block);
                }
            }
        }
    }

    // Small tensors live far apart in memory, and each is too short for the hardware prefetcher to get going; asking
    // for the next small one while this one is processed overlaps its cache misses with useful work.
    private void PrefetchSmall(int i)
    {
        long bytes = _count[i] * ParameterElementSize(_kernel[i]);
        if (bytes > PrefetchLimitBytes || !Sse.IsSupported) return;
        byte* p = (byte*)_parameter[i];
        long shadowBytes = _count[i] * ShadowElementSize(_kernel[i]);
        for (long offset = 0; offset < bytes; offset += 64) Sse.Prefetch0(p + offset);
        for (int a = 0; a < _activeCount; a++)
        {
            byte* s = (byte*)_shadow[_activeProfiles[a]][i];
            for (long offset = 0; offset < shadowBytes; offset += 64) Sse.Prefetch0(s + offset);
        }
    }
}

using System;
using System.Collections.Generic;
using System.Runtime.Intrinsics;
using System.Threading;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// The one pass that writes a profile's weights into a destination, for BEMA's read-out and for Switch EMA:
/// <c>c = ema + α·(θ − θ₀)</c> (or <c>c = ema</c> without θ₀), then <c>out = c</c>, or with a switch blend
/// <c>out = θ + b·(c − θ)</c>. The common CPU case (contiguous, fp32 EMA, θ and θ₀ of one dtype, fp32 or bf16; out
/// fp32 or θ's dtype) runs as a raw loop, queued per tensor and executed in chunks on the update's worker pool. Each
/// element is a sequence of subtracts, multiplies and adds, each rounded once in float32 (never contracted into an FMA),
/// so neither the split into boxes nor the split into chunks changes a bit. Other cases take TorchSharp ops with the
/// same roundings, at once, in <see cref="Queue"/> (also every case when the manager forces TorchSharp ops).
/// Queuing allocates nothing, so a switch of an fp32 or bf16 model allocates no managed memory.
/// <para>
/// Under the non-finite guard a correction term <c>α·(θ − θ₀)</c> that is not finite (a broken live weight, or a θ₀
/// taken from an uninitialised module) is left out: that element reads the EMA, as the update keeps the EMA through a
/// bad step.
/// </para>
/// </summary>
internal sealed unsafe class BiasCorrection : IPartitionedWork
{
    // 1 MiB of fp32 per chunk, as the update's chunks.
    private const long ChunkElements = 1 << 18;

    private struct Job
    {
        public float* Ema;
        public void* Live, Anchor, Dest;
        public long Start, Count;
        public bool Wide, OutWide, Guard;
        public float Alpha, Blend;
    }

    private readonly CpuWorkerPool? _pool;
    private readonly bool _forceOps;
    private readonly bool _guard;
    private Job[] _jobs = new Job[8];
    private int _count;
    private long _elements;
    private int _nextChunk, _chunkCount;
    // Box views made for queued jobs, disposed after the run.
    private readonly List<torch.Tensor> _held = new();

    public BiasCorrection(CpuWorkerPool? pool, bool forceOps, bool guard) => (_pool, _forceOps, _guard) = (pool, forceOps, guard);

    /// <summary>Runs one job now: <paramref name="dest"/> from the arguments of <see cref="Queue"/>.</summary>
    public void Write(torch.Tensor dest, torch.Tensor ema, torch.Tensor live, torch.Tensor? anchor, double alpha, double blend = 1)
    {
        Queue(dest, ema, live, anchor, alpha, blend);
        Run();
    }

    /// <summary>
    /// Queues <paramref name="dest"/> (which may be <paramref name="live"/> itself) for <see cref="Run"/>, or writes it now
    /// through TorchSharp ops when the raw loop does not take it. <paramref name="anchor"/> null: no correction.
    /// </summary>
    public void Queue(torch.Tensor dest, torch.Tensor ema, torch.Tensor live, torch.Tensor? anchor, double alpha, double blend = 1)
    {
        if (!_forceOps && TryQueue(dest, ema, live, anchor, (float)alpha, (float)blend)) return;
        WithOps(dest, ema, live, anchor, alpha, blend, _guard);
    }

    /// <summary>Wakes the pool's helpers while the caller checks the model and queues (see <see cref="CpuWorkerPool.WakeAhead"/>).</summary>
    public void WakeAhead() => _pool?.WakeAhead();

    /// <summary>Keeps <paramref name="view"/> alive until the next <see cref="Run"/> ends, then disposes it.</summary>
    public void Hold(torch.Tensor view) => _held.Add(view);

    /// <summary>Executes the queued jobs, on the pool's threads too when they are large.</summary>
    public void Run()
    {
        try
        {
            if (_elements == 0) return;
            if (_pool is not null && _elements >= RawCpuBackend.ParallelThreshold)
            {
                _nextChunk = 0;
                _chunkCount = (int)((_elements + ChunkElements - 1) / ChunkElements);
                _pool.Run(this);
            }
            else
            {
                ExecuteRange(0, _elements);
            }
        }
        finally
        {
            _count = 0;
            _elements = 0;
            foreach (var t in _held) t.Dispose();
            _held.Clear();
        }
    }

    /// <summary>One thread's share: chunks taken from the shared counter until none are left.</summary>
    public void Execute(int part, int parts)
    {
        int chunk;
        while ((chunk = Interlocked.Increment(ref _nextChunk) - 1) < _chunkCount)
        {
            long lo = chunk * ChunkElements;
            ExecuteRange(lo, Math.Min(_elements, lo + ChunkElements));
        }
    }

    // The op path: the same roundings as the raw loop, one op each (LibTorch converts a double scalar to the fp32
    // tensor's type before it multiplies). Every scalar is a local held to the end: TorchSharp 0.107 passes a temporary
    // Scalar's raw handle and keeps the object no longer, so its finalizer can free it during the native call.
    private static void WithOps(torch.Tensor dest, torch.Tensor ema, torch.Tensor live, torch.Tensor? anchor, double alpha, double blend, bool guard)
    {
        using var _ = torch.no_grad();
        using var one = 1.ToScalar();
        using var zero = 0.ToScalar();
        using var alphaScalar = alpha.ToScalar();
        using var blendScalar = blend.ToScalar();
        using var c = anchor is null ? ema.to_type(torch.ScalarType.Float32, copy: true) : live.to_type(ema.dtype, copy: true);
        if (anchor is not null)
        {
            InPlace.Release(c.sub_(anchor), c);
            InPlace.Release(c.mul_(alphaScalar), c);
            if (guard)
            {
                using var finite = c.isfinite();
                InPlace.Release(c.masked_fill_(finite.logical_not_(), zero), c);
            }
            InPlace.Release(c.add_(ema, one), c);
        }
        if (blend != 1)
        {
            using var t = live.to_type(c.dtype, copy: true);
            InPlace.Release(c.sub_(t), c);
            InPlace.Release(c.mul_(blendScalar), c);
            InPlace.Release(c.add_(t, one), c);
        }
        InPlace.Release(dest.copy_(c), dest);
    }

    private bool TryQueue(torch.Tensor dest, torch.Tensor ema, torch.Tensor live, torch.Tensor? anchor, float alpha, float blend)
    {
        var p = live.dtype;
        if (ema.dtype != torch.ScalarType.Float32 || p is not (torch.ScalarType.Float32 or torch.ScalarType.BFloat16)) return false;
        if ((anchor is not null && anchor.dtype != p) || (dest.dtype != torch.ScalarType.Float32 && dest.dtype != p)) return false;
        long n = ema.numel();
        if (!RawOk(dest, n) || !RawOk(ema, n) || !RawOk(live, n) || (anchor is not null && !RawOk(anchor, n))) return false;
        if (n == 0) return true;
        if (_count == _jobs.Length) Array.Resize(ref _jobs, _count * 2);
        _jobs[_count++] = new Job
        {
            Ema = (float*)NativeTensor.DataPointer(ema),
            Live = (void*)NativeTensor.DataPointer(live),
            Anchor = anchor is null ? null : (void*)NativeTensor.DataPointer(anchor),
            Dest = (void*)NativeTensor.DataPointer(dest),
            Start = _elements,
            Count = n,
            Wide = p == torch.ScalarType.Float32,
            OutWide = dest.dtype == torch.ScalarType.Float32,
            Alpha = alpha,
            Blend = blend,
            Guard = _guard,
        };
        _elements += n;
        return true;
    }

    private static bool RawOk(torch.Tensor t, long n) => t.device_type == DeviceType.CPU && t.is_contiguous() && t.numel() == n;

    // Elements [lo, hi) of the queue, counted across its jobs in order.
    private void ExecuteRange(long lo, long hi)
    {
        for (int i = 0; i < _count; i++)
        {
            ref var job = ref _jobs[i];
            long from = Math.Max(lo, job.Start), to = Math.Min(hi, job.Start + job.Count);
            if (from < to) Apply(ref job, from - job.Start, to - job.Start);
        }
    }

    private static void Apply(ref Job job, long from, long to)
    {
        float alpha = job.Alpha, blend = job.Blend;
        bool corrected = job.Anchor != null, blended = blend != 1;
        float* e = job.Ema;
        void* t0 = job.Live, a0 = job.Anchor, o = job.Dest;
        long j = from;
        if (job.Wide && job.OutWide && Vector256.IsHardwareAccelerated)
        {
            // The same roundings per lane (vector operators are never contracted into an FMA).
            var va = Vector256.Create(alpha);
            var vb = Vector256.Create(blend);
            for (; j + Vector256<float>.Count <= to; j += Vector256<float>.Count)
            {
                var c = Vector256.Load(e + j);
                var t = Vector256.Load((float*)t0 + j);
                if (corrected)
                {
                    var diff = t - Vector256.Load((float*)a0 + j);
                    var scaled = diff * va;
                    if (job.Guard) scaled = Vector256.ConditionalSelect(Vector256.Equals(scaled - scaled, Vector256<float>.Zero), scaled, Vector256<float>.Zero);
                    c = scaled + c;
                }
                if (blended)
                {
                    var step = (c - t) * vb;
                    c = t + step;
                }
                c.Store((float*)o + j);
            }
        }
        for (; j < to; j++)
        {
            float t = job.Wide ? ((float*)t0)[j] : Widen(((ushort*)t0)[j]);
            float c = e[j];
            if (corrected)
            {
                float diff = t - (job.Wide ? ((float*)a0)[j] : Widen(((ushort*)a0)[j]));
                float scaled = diff * alpha;
                if (job.Guard && !float.IsFinite(scaled)) scaled = 0;
                c = scaled + c;
            }
            if (blended)
            {
                float step = (c - t) * blend;
                c = t + step;
            }
            if (job.OutWide) ((float*)o)[j] = c;
            else ((ushort*)o)[j] = Narrow(c);
        }
    }

    private static float Widen(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    // Round to nearest even, as LibTorch converts float32 to bfloat16.
    private static ushort Narrow(float value)
    {
        if (float.IsNaN(value)) return 0x7FC0;
        uint bits = BitConverter.SingleToUInt32Bits(value);
        return (ushort)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
    }
}

using System;
using System.Numerics.Tensors;
using System.Runtime.Intrinsics;
using System.Threading;

namespace EmaGen.Benchmarks;

/// <summary>
/// The physical limit for this update: a tuned in-place loop that reads two arrays and writes one
/// (<c>a = a*d + b*w</c>, 12 bytes per fp32 element), split across the same threads (the same worker pool and
/// chunking) as EmaGen's update, so thread costs are equal on both sides. Two loops are offered, a hand-written
/// Vector512 FMA loop and <c>TensorPrimitives.Lerp</c>; the benchmark takes whichever is faster as the limit.
/// </summary>
internal sealed unsafe class BandwidthProbe : IPartitionedWork, IDisposable
{
    public enum Loop
    {
        Fma,
        Fma256,
        /// <summary>The update's own formula, ema − (ema − p)·w, without the guard, 32 elements per round.</summary>
        Exact,
        /// <summary>The update's fp32 kernel under the non-finite guard (what a default step runs).</summary>
        KernelGuard,
        /// <summary>The update's fp32 kernel with the guard off (<c>NonFinitePolicy.Allow</c>).</summary>
        KernelAllow,
        TensorPrimitivesLerp,
        /// <summary>b holds bf16 (read 2 + 4 bytes, write 4): the limit for an fp32 shadow of a bf16 parameter.</summary>
        WidenBFloat16,
    }

    // Same scheduling as the update: 1 MiB chunks taken from a shared counter.
    private const long ChunkElements = 1 << 18;

    private readonly float* _a;
    private readonly float* _b;
    private readonly long _n;
    private readonly float _d;
    private readonly float _w;
    private readonly Loop _loop;
    private readonly CpuWorkerPool _pool;
    private int _next;

    public BandwidthProbe(float* a, float* b, long n, float decay, int threads, Loop loop)
    {
        _a = a;
        _b = b;
        _n = n;
        _d = decay;
        _w = 1 - decay;
        _loop = loop;
        _pool = new CpuWorkerPool(threads);
    }

    public void Run()
    {
        _next = 0;
        _pool.Run(this);
    }

    public void Execute(int part, int parts)
    {
        int chunk;
        long chunks = (_n + ChunkElements - 1) / ChunkElements;
        while ((chunk = Interlocked.Increment(ref _next) - 1) < chunks)
        {
            long lo = chunk * ChunkElements;
            int n = (int)(Math.Min(_n, lo + ChunkElements) - lo);
            if (_loop == Loop.Fma)
            {
                Fma(_a + lo, _b + lo, n, _d, _w, wide: true);
            }
            else if (_loop == Loop.Fma256)
            {
                Fma(_a + lo, _b + lo, n, _d, _w, wide: false);
            }
            else if (_loop == Loop.Exact)
            {
                Exact(_a + lo, _b + lo, n, _w);
            }
            else if (_loop is Loop.KernelGuard or Loop.KernelAllow)
            {
                var stats = default(KernelStats);
                if (_loop == Loop.KernelGuard) RawCpuBackend.RunKernel<GuardMode>(KernelKind.Float32, _a + lo, _b + lo, n, _d, ref stats, lo);
                else RawCpuBackend.RunKernel<AllowMode>(KernelKind.Float32, _a + lo, _b + lo, n, _d, ref stats, lo);
            }
            else if (_loop == Loop.WidenBFloat16)
            {
                WidenBf16(_a + lo, (ushort*)_b + lo, n, _d, _w);
            }
            else
            {
                var a = new Span<float>(_a + lo, n);
                TensorPrimitives.Lerp(a, new ReadOnlySpan<float>(_b + lo, n), _w, a);
            }
        }
    }

    public void Dispose() => _pool.Dispose();

    private static void WidenBf16(float* a, ushort* b, int n, float d, float w)
    {
        int i = 0;
        var vd = Vector256.Create(d);
        var vw = Vector256.Create(w);
        for (; i <= n - 16; i += 16)
        {
            var (lo, hi) = Vector256.Widen(Vector256.Load(b + i));
            Vector256.FusedMultiplyAdd(Vector256.Load(a + i), vd, Vector256.ShiftLeft(lo, 16).AsSingle() * vw).Store(a + i);
            Vector256.FusedMultiplyAdd(Vector256.Load(a + i + 8), vd, Vector256.ShiftLeft(hi, 16).AsSingle() * vw).Store(a + i + 8);
        }
        for (; i < n; i++) a[i] = a[i] * d + BitConverter.Int32BitsToSingle(b[i] << 16) * w;
    }

    private static void Exact(float* a, float* b, int n, float w)
    {
        int i = 0;
        var vw = Vector256.Create(w);
        for (; i <= n - 32; i += 32)
        {
            var b0 = Vector256.Load(b + i);
            var b1 = Vector256.Load(b + i + 8);
            var b2 = Vector256.Load(b + i + 16);
            var b3 = Vector256.Load(b + i + 24);
            var a0 = Vector256.Load(a + i);
            var a1 = Vector256.Load(a + i + 8);
            var a2 = Vector256.Load(a + i + 16);
            var a3 = Vector256.Load(a + i + 24);
            (a0 - (a0 - b0) * vw).Store(a + i);
            (a1 - (a1 - b1) * vw).Store(a + i + 8);
            (a2 - (a2 - b2) * vw).Store(a + i + 16);
            (a3 - (a3 - b3) * vw).Store(a + i + 24);
        }
        for (; i < n; i++) a[i] = a[i] - (a[i] - b[i]) * w;
    }

    private static void Fma(float* a, float* b, int n, float d, float w, bool wide)
    {
        int i = 0;
        if (wide && Vector512.IsHardwareAccelerated)
        {
            var vd = Vector512.Create(d);
            var vw = Vector512.Create(w);
            for (; i <= n - 32; i += 32)
            {
                var a0 = Vector512.Load(a + i);
                var a1 = Vector512.Load(a + i + 16);
                var b0 = Vector512.Load(b + i);
                var b1 = Vector512.Load(b + i + 16);
                Vector512.FusedMultiplyAdd(a0, vd, b0 * vw).Store(a + i);
                Vector512.FusedMultiplyAdd(a1, vd, b1 * vw).Store(a + i + 16);
            }
        }
        else
        {
            var vd = Vector256.Create(d);
            var vw = Vector256.Create(w);
            for (; i <= n - 16; i += 16)
            {
                var a0 = Vector256.Load(a + i);
                var a1 = Vector256.Load(a + i + 8);
                var b0 = Vector256.Load(b + i);
                var b1 = Vector256.Load(b + i + 8);
                Vector256.FusedMultiplyAdd(a0, vd, b0 * vw).Store(a + i);
                Vector256.FusedMultiplyAdd(a1, vd, b1 * vw).Store(a + i + 8);
            }
        }
        for (; i < n; i++) a[i] = MathF.FusedMultiplyAdd(a[i], d, b[i] * w);
    }
}

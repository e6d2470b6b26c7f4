using System;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace EmaGen;

// CPU kernels for ema = decay * ema + (1 - decay) * p over raw memory, one pass, in place.
// One exact blend everywhere (Blend): ema + w * (p - ema), w = 1 - decay rounded once to the precision the kernel
// computes in (fp32; fp64 for fp64 shadows: a bf16 or fp16 shadow is widened, blended in fp32 and narrowed once). Its
// fixed point is exactly the parameter: a weight that does not move keeps a shadow bit-equal to it, at any decay,
// whereas ema * d + p * w with d and w rounded apart settles at a biased value (d + w misses 1). Low-precision values
// are widened exactly first and the result narrowed once, round to nearest even. No fused multiply-add: it is not
// available on every CPU a binary may run on (a NativeAOT build for baseline x64 has none), so with it a shadow would
// depend on the machine. The TorchSharp-op backend uses LibTorch's lerp_ (the same form, which may fuse), so the two
// paths agree within a tested bound rather than bit for bit.
//
// Every kernel is generic over its mode (RawCpuBackend.Guard.cs): the non-finite guard and the RMS distance ride in
// the same pass, on values already in registers. A blend of two finite values is finite, and a blend with a non-finite
// operand is not, so the guard tests the results only; a block whose results are not all finite is redone element by
// element (Element), which keeps the shadow where the parameter is non-finite and heals a non-finite shadow.
internal sealed unsafe partial class RawCpuBackend
{
    // Elements per stack chunk for the fp16 paths: 2 KiB of floats, well inside L1.
    private const int Chunk = 512;

    /// <summary>
    /// The update of one fp32 element; every kernel computes exactly this: <c>ema − (ema − p)·w</c> (the value of
    /// <c>ema + w·(p − ema)</c>, written so that a −0.0 shadow of a −0.0 parameter stays −0.0), w = 1 − decay rounded
    /// once to the kernel's precision (fp32, or fp64 for fp64 shadows). A shadow equal to its parameter stays unchanged
    /// at any decay; decay 0 is a copy of the parameter (<see cref="RunKernel{TMode}"/>), exact as the schedules that
    /// start there need.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Blend(float ema, float p, float w) => ema - (ema - p) * w;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static double Blend(double ema, double p, double w) => ema - (ema - p) * w;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Blend(Vector256<float> ema, Vector256<float> p, Vector256<float> w) => ema - (ema - p) * w;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<double> Blend(Vector256<double> ema, Vector256<double> p, Vector256<double> w) => ema - (ema - p) * w;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> Blend(Vector128<float> ema, Vector128<float> p, Vector128<float> w) => ema - (ema - p) * w;

    /// <summary>
    /// Blends <paramref name="count"/> elements for one profile; <paramref name="at"/> is where they start in the step's
    /// list (for naming what the guard finds), <paramref name="stats"/> the profile's tally for this part of the step.
    /// </summary>
    public static void RunKernel<TMode>(KernelKind kind, void* ema, void* p, long count, double decay, ref KernelStats stats, long at)
        where TMode : struct, IKernelMode
    {
        if (decay == 0)
        {
            CopyKernel<TMode>(kind, ema, p, count, ref stats, at);
            return;
        }
        float w = (float)(1.0 - decay);
        while (count > 0)
        {
            int n = (int)Math.Min(count, 1 << 30);
            switch (kind)
            {
                case KernelKind.Float32:
                    Single<Float32Load, TMode>((float*)ema, p, n, w, ref stats, at);
                    break;
                case KernelKind.Float64:
                    Float64<TMode>((double*)ema, (double*)p, n, 1.0 - decay, ref stats, at);
                    break;
                case KernelKind.Float32FromBFloat16:
                    Single<BFloat16Load, TMode>((float*)ema, p, n, w, ref stats, at);
                    break;
                case KernelKind.Float32FromFloat16:
                    Float32FromFloat16<TMode>((float*)ema, (Half*)p, n, w, ref stats, at);
                    break;
                case KernelKind.BFloat16:
                    BFloat16<TMode>((ushort*)ema, (ushort*)p, n, w, ref stats, at);
                    break;
                case KernelKind.Float16:
                    Float16<TMode>((Half*)ema, (Half*)p, n, w, ref stats, at);
                    break;
                case KernelKind.Copy1:
                case KernelKind.Copy2:
                case KernelKind.Copy4:
                case KernelKind.Copy8:
                    long bytes = (long)n * ShadowElementSize(kind);
                    Buffer.MemoryCopy(p, ema, bytes, bytes);
                    break;
                default:
                    throw new InvalidOperationException($"No CPU kernel for {kind}.");
            }
            ema = (byte*)ema + (long)n * ShadowElementSize(kind);
            p = (byte*)p + (long)n * ParameterElementSize(kind);
            at += n;
            count -= n;
        }
    }

    /// <summary>Whether <see cref="RunPairKernel{TMode}"/> has a fused kernel for <paramref name="kind"/> (the dtype pairs that matter for size).</summary>
    public static bool HasPairKernel(KernelKind kind) => kind is KernelKind.Float32 or KernelKind.Float32FromBFloat16;

    /// <summary>
    /// Two shadows of the same parameters in one pass: each parameter vector is loaded (and widened) once and feeds
    /// both. Per element the arithmetic (and the guard) is exactly <see cref="RunKernel{TMode}"/>'s, so the result is
    /// bitwise the same as two runs, and so are the two tallies.
    /// </summary>
    public static void RunPairKernel<TMode>(KernelKind kind, void* ema0, void* ema1, void* p, long count, double decay0, double decay1,
        ref KernelStats stats0, ref KernelStats stats1, long at)
        where TMode : struct, IKernelMode
    {
        if (decay0 == 0 || decay1 == 0)
        {
            RunKernel<TMode>(kind, ema0, p, count, decay0, ref stats0, at);
            RunKernel<TMode>(kind, ema1, p, count, decay1, ref stats1, at);
            return;
        }
        float w0 = (float)(1.0 - decay0), w1 = (float)(1.0 - decay1);
        while (count > 0)
        {
            int n = (int)Math.Min(count, 1 << 30);
            if (kind == KernelKind.Float32)
            {
                Pair<Float32Load, TMode>((float*)ema0, (float*)ema1, p, n, w0, w1, ref stats0, ref stats1, at);
            }
            else if (kind == KernelKind.Float32FromBFloat16)
            {
                Pair<BFloat16Load, TMode>((float*)ema0, (float*)ema1, p, n, w0, w1, ref stats0, ref stats1, at);
            }
            else
            {
                throw new InvalidOperationException($"No fused pair kernel for {kind}.");
            }
            ema0 = (float*)ema0 + n;
            ema1 = (float*)ema1 + n;
            p = (byte*)p + (long)n * ParameterElementSize(kind);
            at += n;
            count -= n;
        }
    }

    // How a kernel reads parameters as fp32: 8 or 4 at a time (widened in registers) or one.
    private interface IParameterLoad
    {
        static abstract Vector256<float> Load8(void* p, int i);
        static abstract Vector128<float> Load4(void* p, int i);
        static abstract float Load1(void* p, int i);

        /// <summary>Prefetches the parameter lines that hold elements i to i + 31.</summary>
        static abstract void Prefetch32(void* p, int i);
    }

    private readonly struct Float32Load : IParameterLoad
    {
        public static Vector256<float> Load8(void* p, int i) => Vector256.Load((float*)p + i);
        public static Vector128<float> Load4(void* p, int i) => Vector128.Load((float*)p + i);
        public static float Load1(void* p, int i) => ((float*)p)[i];

        public static void Prefetch32(void* p, int i)
        {
            Sse.Prefetch0((float*)p + i);
            Sse.Prefetch0((float*)p + i + 16);
        }
    }

    // bf16 is the upper half of an fp32: widening is a 16-bit shift, done in registers. On AVX2 the zero-extending
    // load (vpmovzxwd from memory) does half the work in the load itself.
    private readonly struct BFloat16Load : IParameterLoad
    {
        public static Vector256<float> Load8(void* p, int i) => Avx2.IsSupported
            ? Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32((ushort*)p + i), 16).AsSingle()
            : Vector256.ShiftLeft(Vector256.WidenLower(Vector128.Load((ushort*)p + i).ToVector256Unsafe()), 16).AsSingle();
        public static Vector128<float> Load4(void* p, int i) =>
            Vector128.ShiftLeft(Vector128.WidenLower(Vector128.CreateScalar(*(ulong*)((ushort*)p + i)).AsUInt16()), 16).AsSingle();
        public static float Load1(void* p, int i) => FromBFloat16(((ushort*)p)[i]);

        public static void Prefetch32(void* p, int i) => Sse.Prefetch0((ushort*)p + i);
    }

    // One fp32 shadow from fp32 or bf16 parameters. 256-bit vectors on purpose: on an AVX-512 machine the 256-bit loop
    // streamed faster than the 512-bit one and than TensorPrimitives.Lerp (tests/Benchmarks: probe_fma256 against
    // probe_fma and probe_tensorprimitives). 128-bit where 256-bit vectors are not accelerated (baseline x64, Arm64).
    private static void Single<TLoad, TMode>(float* ema, void* p, int n, float w, ref KernelStats s, long at)
        where TLoad : struct, IParameterLoad
        where TMode : struct, IKernelMode
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            // 64 elements per round: eight results share one finiteness test, so the guard adds few instructions per
            // byte streamed (docs/performance.md). The distance loads the parameters again, from L1.
            var vw = Vector256.Create(w);
            var squares = Vector256<float>.Zero;
            for (; i <= n - 64; i += 64)
            {
                var r0 = Blend(Vector256.Load(ema + i), TLoad.Load8(p, i), vw);
                var r1 = Blend(Vector256.Load(ema + i + 8), TLoad.Load8(p, i + 8), vw);
                var r2 = Blend(Vector256.Load(ema + i + 16), TLoad.Load8(p, i + 16), vw);
                var r3 = Blend(Vector256.Load(ema + i + 24), TLoad.Load8(p, i + 24), vw);
                var r4 = Blend(Vector256.Load(ema + i + 32), TLoad.Load8(p, i + 32), vw);
                var r5 = Blend(Vector256.Load(ema + i + 40), TLoad.Load8(p, i + 40), vw);
                var r6 = Blend(Vector256.Load(ema + i + 48), TLoad.Load8(p, i + 48), vw);
                var r7 = Blend(Vector256.Load(ema + i + 56), TLoad.Load8(p, i + 56), vw);
                if (TMode.Guard && !AllFinite((r0 + r1) + (r2 + r3), (r4 + r5) + (r6 + r7)))
                {
                    Elements<TLoad, TMode>(ema, p, i, 64, w, ref s, at);
                    continue;
                }
                r0.Store(ema + i);
                r1.Store(ema + i + 8);
                r2.Store(ema + i + 16);
                r3.Store(ema + i + 24);
                r4.Store(ema + i + 32);
                r5.Store(ema + i + 40);
                r6.Store(ema + i + 48);
                r7.Store(ema + i + 56);
                if (TMode.Rms)
                {
                    squares += Squares(r0, r1, r2, r3, TLoad.Load8(p, i), TLoad.Load8(p, i + 8), TLoad.Load8(p, i + 16), TLoad.Load8(p, i + 24))
                        + Squares(r4, r5, r6, r7, TLoad.Load8(p, i + 32), TLoad.Load8(p, i + 40), TLoad.Load8(p, i + 48), TLoad.Load8(p, i + 56));
                }
            }
            // The rest of a short tensor a vector at a time.
            for (; i <= n - 8; i += 8)
            {
                var p0 = TLoad.Load8(p, i);
                var r0 = Blend(Vector256.Load(ema + i), p0, vw);
                if (TMode.Guard && !AllFinite(r0, Vector256<float>.Zero))
                {
                    Elements<TLoad, TMode>(ema, p, i, 8, w, ref s, at);
                    continue;
                }
                r0.Store(ema + i);
                if (TMode.Rms)
                {
                    var d0 = r0 - p0;
                    squares += d0 * d0;
                }
            }
            if (TMode.Rms) s.SumSquares += Vector256.Sum(squares);
        }
        else if (Vector128.IsHardwareAccelerated)
        {
            var vw = Vector128.Create(w);
            var squares = Vector128<float>.Zero;
            for (; i <= n - 8; i += 8)
            {
                var p0 = TLoad.Load4(p, i);
                var p1 = TLoad.Load4(p, i + 4);
                var r0 = Blend(Vector128.Load(ema + i), p0, vw);
                var r1 = Blend(Vector128.Load(ema + i + 4), p1, vw);
                if (TMode.Guard && !AllFinite(r0, r1))
                {
                    Elements<TLoad, TMode>(ema, p, i, 8, w, ref s, at);
                    continue;
                }
                r0.Store(ema + i);
                r1.Store(ema + i + 4);
                if (TMode.Rms)
                {
                    var d0 = r0 - p0;
                    var d1 = r1 - p1;
                    squares += d0 * d0 + d1 * d1;
                }
            }
            if (TMode.Rms) s.SumSquares += Vector128.Sum(squares);
        }
        Elements<TLoad, TMode>(ema, p, i, n - i, w, ref s, at);
    }

    // A block that holds a non-finite value (or a false alarm) element by element, out of the vector loop's body; and
    // the scalar tail.
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void Elements<TLoad, TMode>(float* ema, void* p, int from, int count, float w, ref KernelStats s, long at)
        where TLoad : struct, IParameterLoad
        where TMode : struct, IKernelMode
    {
        for (int j = from; j < from + count; j++) ema[j] = Element<float, TMode>(ema[j], TLoad.Load1(p, j), w, ref s, at + j);
    }

    // Two shadows of the same parameters: each parameter vector is loaded (and widened) once and feeds both.
    private static void Pair<TLoad, TMode>(float* ema0, float* ema1, void* p, int n, float w0, float w1,
        ref KernelStats s0, ref KernelStats s1, long at)
        where TLoad : struct, IParameterLoad
        where TMode : struct, IKernelMode
    {
        if (!Vector256.IsHardwareAccelerated)
        {
            Single<TLoad, TMode>(ema0, p, n, w0, ref s0, at);
            Single<TLoad, TMode>(ema1, p, n, w1, ref s1, at);
            return;
        }
        int i = 0;
        var vw0 = Vector256.Create(w0);
        var vw1 = Vector256.Create(w1);
        var squares0 = Vector256<float>.Zero;
        var squares1 = Vector256<float>.Zero;
        // 32 elements of both shadows per round: eight results share one finiteness test, as in Single.
        for (; i <= n - 32; i += 32)
        {
            if (Sse.IsSupported) PrefetchPairRound<TLoad>(ema0, ema1, p, i + PairPrefetchDistance);
            var p0 = TLoad.Load8(p, i);
            var p1 = TLoad.Load8(p, i + 8);
            var p2 = TLoad.Load8(p, i + 16);
            var p3 = TLoad.Load8(p, i + 24);
            var a0 = Blend(Vector256.Load(ema0 + i), p0, vw0);
            var a1 = Blend(Vector256.Load(ema0 + i + 8), p1, vw0);
            var a2 = Blend(Vector256.Load(ema0 + i + 16), p2, vw0);
            var a3 = Blend(Vector256.Load(ema0 + i + 24), p3, vw0);
            var b0 = Blend(Vector256.Load(ema1 + i), p0, vw1);
            var b1 = Blend(Vector256.Load(ema1 + i + 8), p1, vw1);
            var b2 = Blend(Vector256.Load(ema1 + i + 16), p2, vw1);
            var b3 = Blend(Vector256.Load(ema1 + i + 24), p3, vw1);
            if (TMode.Guard && !AllFinite((a0 + a1) + (a2 + a3), (b0 + b1) + (b2 + b3)))
            {
                PairElements<TLoad, TMode>(ema0, ema1, p, i, 32, w0, w1, ref s0, ref s1, at);
                continue;
            }
            a0.Store(ema0 + i);
            a1.Store(ema0 + i + 8);
            a2.Store(ema0 + i + 16);
            a3.Store(ema0 + i + 24);
            b0.Store(ema1 + i);
            b1.Store(ema1 + i + 8);
            b2.Store(ema1 + i + 16);
            b3.Store(ema1 + i + 24);
            if (TMode.Rms)
            {
                squares0 += Squares(a0, a1, a2, a3, p0, p1, p2, p3);
                squares1 += Squares(b0, b1, b2, b3, p0, p1, p2, p3);
            }
        }
        // The rest of a short tensor a vector at a time.
        for (; i <= n - 8; i += 8)
        {
            var p0 = TLoad.Load8(p, i);
            var a0 = Blend(Vector256.Load(ema0 + i), p0, vw0);
            var b0 = Blend(Vector256.Load(ema1 + i), p0, vw1);
            if (TMode.Guard && !AllFinite(a0, b0))
            {
                PairElements<TLoad, TMode>(ema0, ema1, p, i, 8, w0, w1, ref s0, ref s1, at);
                continue;
            }
            a0.Store(ema0 + i);
            b0.Store(ema1 + i);
            if (TMode.Rms)
            {
                var d0 = a0 - p0;
                var e0 = b0 - p0;
                squares0 += d0 * d0;
                squares1 += e0 * e0;
            }
        }
        if (TMode.Rms)
        {
            s0.SumSquares += Vector256.Sum(squares0);
            s1.SumSquares += Vector256.Sum(squares1);
        }
        PairElements<TLoad, TMode>(ema0, ema1, p, i, n - i, w0, w1, ref s0, ref s1, at);
    }

    // Five streams per core (the parameters read, two shadows read and written) are more than the hardware prefetchers
    // keep far enough ahead, and the pair kernel fell short of its traffic ratio to Single (two profiles cost more than
    // 5/3 of one). A software prefetch of every stream's lines 512 elements ahead (2 KiB of fp32) brings it to about that
    // ratio. Single's three streams gained nothing from the same prefetch, and lost some: it has none
    // (docs/performance.md). A prefetch past a tensor's end touches the next tensor's lines (the next packed one) or
    // nothing: it never faults.
    private const int PairPrefetchDistance = 512;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PrefetchPairRound<TLoad>(float* ema0, float* ema1, void* p, int i)
        where TLoad : struct, IParameterLoad
    {
        Sse.Prefetch0(ema0 + i);
        Sse.Prefetch0(ema0 + i + 16);
        Sse.Prefetch0(ema1 + i);
        Sse.Prefetch0(ema1 + i + 16);
        TLoad.Prefetch32(p, i);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Squares(Vector256<float> r0, Vector256<float> r1, Vector256<float> r2, Vector256<float> r3,
        Vector256<float> p0, Vector256<float> p1, Vector256<float> p2, Vector256<float> p3)
    {
        var d0 = r0 - p0;
        var d1 = r1 - p1;
        var d2 = r2 - p2;
        var d3 = r3 - p3;
        return (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
    }

    // Both shadows of a block element by element (a non-finite value or a false alarm, and the scalar tail).
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void PairElements<TLoad, TMode>(float* ema0, float* ema1, void* p, int from, int count, float w0, float w1,
        ref KernelStats s0, ref KernelStats s1, long at)
        where TLoad : struct, IParameterLoad
        where TMode : struct, IKernelMode
    {
        for (int j = from; j < from + count; j++)
        {
            float v = TLoad.Load1(p, j);
            ema0[j] = Element<float, TMode>(ema0[j], v, w0, ref s0, at + j);
            ema1[j] = Element<float, TMode>(ema1[j], v, w1, ref s1, at + j);
        }
    }

    private static void Float64<TMode>(double* ema, double* p, int n, double w, ref KernelStats s, long at)
        where TMode : struct, IKernelMode
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var vw = Vector256.Create(w);
            var squares = Vector256<double>.Zero;
            for (; i <= n - 4; i += 4)
            {
                var p0 = Vector256.Load(p + i);
                var r = Blend(Vector256.Load(ema + i), p0, vw);
                if (TMode.Guard && !Vector256.EqualsAll(r - r, Vector256<double>.Zero))
                {
                    for (int j = i; j < i + 4; j++) ema[j] = Element<double, TMode>(ema[j], p[j], w, ref s, at + j);
                    continue;
                }
                r.Store(ema + i);
                if (TMode.Rms)
                {
                    var d = r - p0;
                    squares += d * d;
                }
            }
            if (TMode.Rms) s.SumSquares += Vector256.Sum(squares);
        }
        for (; i < n; i++) ema[i] = Element<double, TMode>(ema[i], p[i], w, ref s, at + i);
    }

    private static void Float32FromFloat16<TMode>(float* ema, Half* p, int n, float w, ref KernelStats s, long at)
        where TMode : struct, IKernelMode
    {
        float* widened = stackalloc float[Chunk];
        for (int i = 0; i < n; i += Chunk)
        {
            int m = Math.Min(Chunk, n - i);
            TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(p + i, m), new Span<float>(widened, m));
            Single<Float32Load, TMode>(ema + i, widened, m, w, ref s, at + i);
        }
    }

    // Low-precision shadows: the RMS distance is measured before the result is narrowed.
    private static void BFloat16<TMode>(ushort* ema, ushort* p, int n, float w, ref KernelStats s, long at)
        where TMode : struct, IKernelMode
    {
        for (int i = 0; i < n; i++)
        {
            float e = FromBFloat16(ema[i]);
            float r = Element<float, TMode>(e, FromBFloat16(p[i]), w, ref s, at + i);
            // A kept element is written back as it was (a NaN's payload included).
            if (BitConverter.SingleToInt32Bits(r) != BitConverter.SingleToInt32Bits(e)) ema[i] = ToBFloat16(r);
        }
    }

    private static void Float16<TMode>(Half* ema, Half* p, int n, float w, ref KernelStats s, long at)
        where TMode : struct, IKernelMode
    {
        float* a = stackalloc float[Chunk];
        float* b = stackalloc float[Chunk];
        for (int i = 0; i < n; i += Chunk)
        {
            int m = Math.Min(Chunk, n - i);
            TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(ema + i, m), new Span<float>(a, m));
            TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(p + i, m), new Span<float>(b, m));
            Single<Float32Load, TMode>(a, b, m, w, ref s, at + i);
            TensorPrimitives.ConvertToHalf(new ReadOnlySpan<float>(a, m), new Span<Half>(ema + i, m));
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float FromBFloat16(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    // Round to nearest even, as torch does when it narrows fp32 to bf16; NaN stays NaN.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static ushort ToBFloat16(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value)) return (ushort)((bits >> 16) | 0x40);
        bits += 0x7FFF + ((bits >> 16) & 1);
        return (ushort)(bits >> 16);
    }
}

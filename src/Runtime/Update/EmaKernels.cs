using System;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace EmaGen;

/// <summary>
/// CPU kernels for <c>ema = decay * ema + (1 - decay) * p</c> over raw memory, one pass, in place. Math is fp32 (fp64
/// for fp64); low-precision inputs are widened in registers or in an L1-sized stack chunk, never through a
/// full-size temporary. At decay 0 and 1 the result is exactly the parameter or the old shadow.
/// </summary>
internal static unsafe class EmaKernels
{
    // Elements per stack chunk for the fp16 paths: 2 KiB of floats, well inside L1.
    private const int Chunk = 512;

    public static void Run(KernelKind kind, void* ema, void* p, long count, double decay)
    {
        float w = (float)(1.0 - decay);
        float d = (float)decay;
        while (count > 0)
        {
            int n = (int)Math.Min(count, 1 << 30);
            switch (kind)
            {
                case KernelKind.Float32:
                    Float32((float*)ema, (float*)p, n, d, w);
                    break;
                case KernelKind.Float64:
                    TensorPrimitives.Lerp(new ReadOnlySpan<double>(ema, n), new ReadOnlySpan<double>(p, n), 1.0 - decay, new Span<double>(ema, n));
                    break;
                case KernelKind.Float32FromBFloat16:
                    Float32FromBFloat16((float*)ema, (ushort*)p, n, d, w);
                    break;
                case KernelKind.Float32FromFloat16:
                    Float32FromFloat16((float*)ema, (Half*)p, n, w);
                    break;
                case KernelKind.BFloat16:
                    BFloat16((ushort*)ema, (ushort*)p, n, d, w);
                    break;
                case KernelKind.Float16:
                    Float16((Half*)ema, (Half*)p, n, w);
                    break;
                case KernelKind.Copy1:
                case KernelKind.Copy2:
                case KernelKind.Copy4:
                case KernelKind.Copy8:
                    long bytes = (long)n * KernelKinds.ShadowElementSize(kind);
                    Buffer.MemoryCopy(p, ema, bytes, bytes);
                    break;
                default:
                    throw new InvalidOperationException($"No CPU kernel for {kind}.");
            }
            ema = (byte*)ema + (long)n * KernelKinds.ShadowElementSize(kind);
            p = (byte*)p + (long)n * KernelKinds.ParameterElementSize(kind);
            count -= n;
        }
    }

    /// <summary>Whether <see cref="RunPair"/> has a fused kernel for <paramref name="kind"/> (the dtype pairs that matter for size).</summary>
    public static bool HasPairKernel(KernelKind kind) => kind is KernelKind.Float32 or KernelKind.Float32FromBFloat16;

    /// <summary>
    /// Two shadows of the same parameters in one pass: each parameter vector is loaded (and widened) once and feeds
    /// both. Per element the arithmetic is exactly <see cref="Run"/>'s, so the result is bitwise the same as two runs.
    /// </summary>
    public static void RunPair(KernelKind kind, void* ema0, void* ema1, void* p, long count, double decay0, double decay1)
    {
        while (count > 0)
        {
            int n = (int)Math.Min(count, 1 << 30);
            if (kind == KernelKind.Float32)
            {
                Float32Pair((float*)ema0, (float*)ema1, (float*)p, n, (float)decay0, (float)(1.0 - decay0), (float)decay1, (float)(1.0 - decay1));
            }
            else if (kind == KernelKind.Float32FromBFloat16)
            {
                Float32FromBFloat16Pair((float*)ema0, (float*)ema1, (ushort*)p, n, (float)decay0, (float)(1.0 - decay0), (float)decay1, (float)(1.0 - decay1));
            }
            else
            {
                throw new InvalidOperationException($"No fused pair kernel for {kind}.");
            }
            ema0 = (float*)ema0 + n;
            ema1 = (float*)ema1 + n;
            p = (byte*)p + (long)n * KernelKinds.ParameterElementSize(kind);
            count -= n;
        }
    }

    private static void Float32Pair(float* ema0, float* ema1, float* p, int n, float d0, float w0, float d1, float w1)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var vd0 = Vector256.Create(d0);
            var vw0 = Vector256.Create(w0);
            var vd1 = Vector256.Create(d1);
            var vw1 = Vector256.Create(w1);
            for (; i <= n - 16; i += 16)
            {
                var p0 = Vector256.Load(p + i);
                var p1 = Vector256.Load(p + i + 8);
                Vector256.FusedMultiplyAdd(Vector256.Load(ema0 + i), vd0, p0 * vw0).Store(ema0 + i);
                Vector256.FusedMultiplyAdd(Vector256.Load(ema0 + i + 8), vd0, p1 * vw0).Store(ema0 + i + 8);
                Vector256.FusedMultiplyAdd(Vector256.Load(ema1 + i), vd1, p0 * vw1).Store(ema1 + i);
                Vector256.FusedMultiplyAdd(Vector256.Load(ema1 + i + 8), vd1, p1 * vw1).Store(ema1 + i + 8);
            }
        }
        else
        {
            Float32(ema0, p, n, d0, w0);
            Float32(ema1, p, n, d1, w1);
            return;
        }
        for (; i < n; i++)
        {
            ema0[i] = MathF.FusedMultiplyAdd(ema0[i], d0, p[i] * w0);
            ema1[i] = MathF.FusedMultiplyAdd(ema1[i], d1, p[i] * w1);
        }
    }

    private static void Float32FromBFloat16Pair(float* ema0, float* ema1, ushort* p, int n, float d0, float w0, float d1, float w1)
    {
        int i = 0;
        if (Avx2.IsSupported && Fma.IsSupported)
        {
            var vd0 = Vector256.Create(d0);
            var vw0 = Vector256.Create(w0);
            var vd1 = Vector256.Create(d1);
            var vw1 = Vector256.Create(w1);
            for (; i <= n - 16; i += 16)
            {
                var p0 = Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32(p + i), 16).AsSingle();
                var p1 = Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32(p + i + 8), 16).AsSingle();
                Avx.Store(ema0 + i, Fma.MultiplyAdd(Avx.LoadVector256(ema0 + i), vd0, Avx.Multiply(p0, vw0)));
                Avx.Store(ema0 + i + 8, Fma.MultiplyAdd(Avx.LoadVector256(ema0 + i + 8), vd0, Avx.Multiply(p1, vw0)));
                Avx.Store(ema1 + i, Fma.MultiplyAdd(Avx.LoadVector256(ema1 + i), vd1, Avx.Multiply(p0, vw1)));
                Avx.Store(ema1 + i + 8, Fma.MultiplyAdd(Avx.LoadVector256(ema1 + i + 8), vd1, Avx.Multiply(p1, vw1)));
            }
        }
        else
        {
            Float32FromBFloat16(ema0, p, n, d0, w0);
            Float32FromBFloat16(ema1, p, n, d1, w1);
            return;
        }
        for (; i < n; i++)
        {
            float v = FromBFloat16(p[i]);
            ema0[i] = MathF.FusedMultiplyAdd(ema0[i], d0, v * w0);
            ema1[i] = MathF.FusedMultiplyAdd(ema1[i], d1, v * w1);
        }
    }

    // ema*d + p*w with one rounding (FMA). 256-bit vectors on purpose: on the project's AVX-512 machine (Zen 5) the
    // 256-bit loop streamed 10-20% faster than the 512-bit one and than TensorPrimitives.Lerp in the same run
    // (tests/Benchmarks, probe_fma256 vs probe_fma vs probe_tensorprimitives). Exact at d = 0 and d = 1.
    private static void Float32(float* ema, float* p, int n, float d, float w)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var vd = Vector256.Create(d);
            var vw = Vector256.Create(w);
            for (; i <= n - 16; i += 16)
            {
                var e0 = Vector256.Load(ema + i);
                var e1 = Vector256.Load(ema + i + 8);
                var p0 = Vector256.Load(p + i);
                var p1 = Vector256.Load(p + i + 8);
                Vector256.FusedMultiplyAdd(e0, vd, p0 * vw).Store(ema + i);
                Vector256.FusedMultiplyAdd(e1, vd, p1 * vw).Store(ema + i + 8);
            }
        }
        else
        {
            var e = new Span<float>(ema, n);
            TensorPrimitives.Lerp(e, new ReadOnlySpan<float>(p, n), w, e);
            return;
        }
        for (; i < n; i++)
        {
            ema[i] = MathF.FusedMultiplyAdd(ema[i], d, p[i] * w);
        }
    }

    // bf16 is the upper half of an fp32: widening is a 16-bit shift, done in registers. On AVX2 the zero-extending
    // load (vpmovzxwd from memory) does half the work in the load itself.
    private static void Float32FromBFloat16(float* ema, ushort* p, int n, float d, float w)
    {
        int i = 0;
        if (Avx2.IsSupported && Fma.IsSupported)
        {
            var vd = Vector256.Create(d);
            var vw = Vector256.Create(w);
            for (; i <= n - 16; i += 16)
            {
                var p0 = Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32(p + i), 16).AsSingle();
                var p1 = Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32(p + i + 8), 16).AsSingle();
                var e0 = Avx.LoadVector256(ema + i);
                var e1 = Avx.LoadVector256(ema + i + 8);
                Avx.Store(ema + i, Fma.MultiplyAdd(e0, vd, Avx.Multiply(p0, vw)));
                Avx.Store(ema + i + 8, Fma.MultiplyAdd(e1, vd, Avx.Multiply(p1, vw)));
            }
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            var vd = Vector256.Create(d);
            var vw = Vector256.Create(w);
            for (; i <= n - 16; i += 16)
            {
                var (lo, hi) = Vector256.Widen(Vector256.Load(p + i));
                var e0 = Vector256.Load(ema + i);
                var e1 = Vector256.Load(ema + i + 8);
                Vector256.FusedMultiplyAdd(e0, vd, Vector256.ShiftLeft(lo, 16).AsSingle() * vw).Store(ema + i);
                Vector256.FusedMultiplyAdd(e1, vd, Vector256.ShiftLeft(hi, 16).AsSingle() * vw).Store(ema + i + 8);
            }
        }
        for (; i < n; i++)
        {
            ema[i] = MathF.FusedMultiplyAdd(ema[i], d, FromBFloat16(p[i]) * w);
        }
    }

    private static void Float32FromFloat16(float* ema, Half* p, int n, float w)
    {
        float* widened = stackalloc float[Chunk];
        for (int i = 0; i < n; i += Chunk)
        {
            int m = Math.Min(Chunk, n - i);
            var wide = new Span<float>(widened, m);
            TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(p + i, m), wide);
            var e = new Span<float>(ema + i, m);
            TensorPrimitives.Lerp(e, wide, w, e);
        }
    }

    private static void BFloat16(ushort* ema, ushort* p, int n, float d, float w)
    {
        for (int i = 0; i < n; i++)
        {
            ema[i] = ToBFloat16(MathF.FusedMultiplyAdd(FromBFloat16(ema[i]), d, FromBFloat16(p[i]) * w));
        }
    }

    private static void Float16(Half* ema, Half* p, int n, float w)
    {
        float* a = stackalloc float[Chunk];
        float* b = stackalloc float[Chunk];
        for (int i = 0; i < n; i += Chunk)
        {
            int m = Math.Min(Chunk, n - i);
            var sa = new Span<float>(a, m);
            var sb = new Span<float>(b, m);
            TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(ema + i, m), sa);
            TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(p + i, m), sb);
            TensorPrimitives.Lerp(sa, sb, w, sa);
            TensorPrimitives.ConvertToHalf(sa, new Span<Half>(ema + i, m));
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

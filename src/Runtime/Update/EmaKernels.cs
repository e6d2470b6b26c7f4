using System;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

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
                    TensorPrimitives.Lerp(new ReadOnlySpan<float>(ema, n), new ReadOnlySpan<float>(p, n), w, new Span<float>(ema, n));
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
                default:
                    throw new InvalidOperationException($"No CPU kernel for {kind}.");
            }
            ema = (byte*)ema + (long)n * KernelKinds.ShadowElementSize(kind);
            p = (byte*)p + (long)n * KernelKinds.ParameterElementSize(kind);
            count -= n;
        }
    }

    // bf16 is the upper half of an fp32: widening is a 16-bit shift, done on 16 values per Vector512.
    private static void Float32FromBFloat16(float* ema, ushort* p, int n, float d, float w)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var vd = Vector512.Create(d);
            var vw = Vector512.Create(w);
            for (; i <= n - 32; i += 32)
            {
                var (lo, hi) = Vector512.Widen(Vector512.Load(p + i));
                var e0 = Vector512.Load(ema + i);
                var e1 = Vector512.Load(ema + i + 16);
                Vector512.FusedMultiplyAdd(e0, vd, Vector512.ShiftLeft(lo, 16).AsSingle() * vw).Store(ema + i);
                Vector512.FusedMultiplyAdd(e1, vd, Vector512.ShiftLeft(hi, 16).AsSingle() * vw).Store(ema + i + 16);
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

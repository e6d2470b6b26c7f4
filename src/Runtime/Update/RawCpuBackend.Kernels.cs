using System;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace EmaGen;

// CPU kernels for ema = decay * ema + (1 - decay) * p over raw memory, one pass, in place.
// One exact blend everywhere (Blend): ema + w * (p - ema), w = 1 - decay rounded once to the shadow's precision. Its
// fixed point is exactly the parameter: a weight that does not move keeps a shadow bit-equal to it, at any decay,
// whereas ema * d + p * w with d and w rounded apart settles at a biased value (d + w misses 1). Low-precision values
// are widened exactly first and the result narrowed once, round to nearest even. No fused multiply-add: it is not
// available on every CPU a binary may run on (a NativeAOT build for baseline x64 has none), so with it a shadow would
// depend on the machine. The TorchSharp-op backend uses LibTorch's lerp_ (the same form, which may fuse), so the two
// paths agree within a tested bound rather than bit for bit.
internal sealed unsafe partial class RawCpuBackend
{
    // Elements per stack chunk for the fp16 paths: 2 KiB of floats, well inside L1.
    private const int Chunk = 512;

    /// <summary>
    /// The update of one fp32 element; every kernel computes exactly this: <c>ema − (ema − p)·w</c> (the value of
    /// <c>ema + w·(p − ema)</c>, written so that a −0.0 shadow of a −0.0 parameter stays −0.0), w = 1 − decay rounded
    /// once to the shadow's precision. A shadow equal to its parameter stays unchanged at any decay; decay 0 is a copy
    /// of the parameter (<see cref="RunKernel"/>), exact as the schedules that start there need.
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

    public static void RunKernel(KernelKind kind, void* ema, void* p, long count, double decay)
    {
        if (decay == 0)
        {
            CopyKernel(kind, ema, p, count);
            return;
        }
        float w = (float)(1.0 - decay);
        while (count > 0)
        {
            int n = (int)Math.Min(count, 1 << 30);
            switch (kind)
            {
                case KernelKind.Float32:
                    Float32((float*)ema, (float*)p, n, w);
                    break;
                case KernelKind.Float64:
                    Float64((double*)ema, (double*)p, n, 1.0 - decay);
                    break;
                case KernelKind.Float32FromBFloat16:
                    Float32FromBFloat16((float*)ema, (ushort*)p, n, w);
                    break;
                case KernelKind.Float32FromFloat16:
                    Float32FromFloat16((float*)ema, (Half*)p, n, w);
                    break;
                case KernelKind.BFloat16:
                    BFloat16((ushort*)ema, (ushort*)p, n, w);
                    break;
                case KernelKind.Float16:
                    Float16((Half*)ema, (Half*)p, n, w);
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
            count -= n;
        }
    }

    // Decay 0: the shadow becomes the parameter exactly (widened exactly for fp32 shadows of bf16/fp16 parameters).
    private static void CopyKernel(KernelKind kind, void* ema, void* p, long count)
    {
        switch (kind)
        {
            case KernelKind.Float32FromBFloat16:
                for (long i = 0; i < count; i++) ((float*)ema)[i] = FromBFloat16(((ushort*)p)[i]);
                break;
            case KernelKind.Float32FromFloat16:
                for (long i = 0; i < count; i++) ((float*)ema)[i] = (float)((Half*)p)[i];
                break;
            case KernelKind.Float32:
            case KernelKind.Float64:
            case KernelKind.BFloat16:
            case KernelKind.Float16:
            case KernelKind.Copy1:
            case KernelKind.Copy2:
            case KernelKind.Copy4:
            case KernelKind.Copy8:
                // Shadow and parameter of one dtype: the bytes themselves.
                long bytes = count * ShadowElementSize(kind);
                Buffer.MemoryCopy(p, ema, bytes, bytes);
                break;
            default:
                throw new InvalidOperationException($"No CPU copy for {kind}: a new kernel kind needs its decay-0 copy here.");
        }
    }

    /// <summary>Whether <see cref="RunPairKernel"/> has a fused kernel for <paramref name="kind"/> (the dtype pairs that matter for size).</summary>
    public static bool HasPairKernel(KernelKind kind) => kind is KernelKind.Float32 or KernelKind.Float32FromBFloat16;

    /// <summary>
    /// Two shadows of the same parameters in one pass: each parameter vector is loaded (and widened) once and feeds
    /// both. Per element the arithmetic is exactly <see cref="RunKernel"/>'s, so the result is bitwise the same as two runs.
    /// </summary>
    public static void RunPairKernel(KernelKind kind, void* ema0, void* ema1, void* p, long count, double decay0, double decay1)
    {
        if (decay0 == 0 || decay1 == 0)
        {
            RunKernel(kind, ema0, p, count, decay0);
            RunKernel(kind, ema1, p, count, decay1);
            return;
        }
        float w0 = (float)(1.0 - decay0), w1 = (float)(1.0 - decay1);
        while (count > 0)
        {
            int n = (int)Math.Min(count, 1 << 30);
            if (kind == KernelKind.Float32)
            {
                Pair<Float32Load>((float*)ema0, (float*)ema1, p, n, w0, w1);
            }
            else if (kind == KernelKind.Float32FromBFloat16)
            {
                Pair<BFloat16Load>((float*)ema0, (float*)ema1, p, n, w0, w1);
            }
            else
            {
                throw new InvalidOperationException($"No fused pair kernel for {kind}.");
            }
            ema0 = (float*)ema0 + n;
            ema1 = (float*)ema1 + n;
            p = (byte*)p + (long)n * ParameterElementSize(kind);
            count -= n;
        }
    }

    // 256-bit vectors on purpose: on an AVX-512 machine the 256-bit loop streamed faster than the 512-bit one and than
    // TensorPrimitives.Lerp (tests/Benchmarks: probe_fma256 against probe_fma and probe_tensorprimitives). 128-bit where
    // 256-bit vectors are not accelerated (baseline x64, Arm64).
    private static void Float32(float* ema, float* p, int n, float w)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var vw = Vector256.Create(w);
            for (; i <= n - 16; i += 16)
            {
                Blend(Vector256.Load(ema + i), Vector256.Load(p + i), vw).Store(ema + i);
                Blend(Vector256.Load(ema + i + 8), Vector256.Load(p + i + 8), vw).Store(ema + i + 8);
            }
        }
        else if (Vector128.IsHardwareAccelerated)
        {
            var vw = Vector128.Create(w);
            for (; i <= n - 8; i += 8)
            {
                Blend(Vector128.Load(ema + i), Vector128.Load(p + i), vw).Store(ema + i);
                Blend(Vector128.Load(ema + i + 4), Vector128.Load(p + i + 4), vw).Store(ema + i + 4);
            }
        }
        for (; i < n; i++) ema[i] = Blend(ema[i], p[i], w);
    }

    // How a pair kernel reads parameters as fp32: 8 at a time (widened in registers) or one.
    private interface IParameterLoad
    {
        static abstract Vector256<float> Load8(void* p, int i);
        static abstract float Load1(void* p, int i);
        static abstract void Single(float* ema, void* p, int n, float w);
    }

    private readonly struct Float32Load : IParameterLoad
    {
        public static Vector256<float> Load8(void* p, int i) => Vector256.Load((float*)p + i);
        public static float Load1(void* p, int i) => ((float*)p)[i];
        public static void Single(float* ema, void* p, int n, float w) => Float32(ema, (float*)p, n, w);
    }

    private readonly struct BFloat16Load : IParameterLoad
    {
        public static Vector256<float> Load8(void* p, int i) => Avx2.IsSupported
            ? Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32((ushort*)p + i), 16).AsSingle()
            : Vector256.ShiftLeft(Vector256.WidenLower(Vector128.Load((ushort*)p + i).ToVector256Unsafe()), 16).AsSingle();
        public static float Load1(void* p, int i) => FromBFloat16(((ushort*)p)[i]);
        public static void Single(float* ema, void* p, int n, float w) => Float32FromBFloat16(ema, (ushort*)p, n, w);
    }

    // Two shadows of the same parameters: each parameter vector is loaded (and widened) once and feeds both.
    private static void Pair<TLoad>(float* ema0, float* ema1, void* p, int n, float w0, float w1)
        where TLoad : struct, IParameterLoad
    {
        if (!Vector256.IsHardwareAccelerated)
        {
            TLoad.Single(ema0, p, n, w0);
            TLoad.Single(ema1, p, n, w1);
            return;
        }
        int i = 0;
        var vw0 = Vector256.Create(w0);
        var vw1 = Vector256.Create(w1);
        for (; i <= n - 16; i += 16)
        {
            var p0 = TLoad.Load8(p, i);
            var p1 = TLoad.Load8(p, i + 8);
            Blend(Vector256.Load(ema0 + i), p0, vw0).Store(ema0 + i);
            Blend(Vector256.Load(ema0 + i + 8), p1, vw0).Store(ema0 + i + 8);
            Blend(Vector256.Load(ema1 + i), p0, vw1).Store(ema1 + i);
            Blend(Vector256.Load(ema1 + i + 8), p1, vw1).Store(ema1 + i + 8);
        }
        for (; i < n; i++)
        {
            float v = TLoad.Load1(p, i);
            ema0[i] = Blend(ema0[i], v, w0);
            ema1[i] = Blend(ema1[i], v, w1);
        }
    }

    private static void Float64(double* ema, double* p, int n, double w)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var vw = Vector256.Create(w);
            for (; i <= n - 4; i += 4) Blend(Vector256.Load(ema + i), Vector256.Load(p + i), vw).Store(ema + i);
        }
        for (; i < n; i++) ema[i] = Blend(ema[i], p[i], w);
    }

    // bf16 is the upper half of an fp32: widening is a 16-bit shift, done in registers. On AVX2 the zero-extending
    // load (vpmovzxwd from memory) does half the work in the load itself.
    private static void Float32FromBFloat16(float* ema, ushort* p, int n, float w)
    {
        int i = 0;
        if (Avx2.IsSupported)
        {
            var vw = Vector256.Create(w);
            for (; i <= n - 16; i += 16)
            {
                var p0 = Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32(p + i), 16).AsSingle();
                var p1 = Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32(p + i + 8), 16).AsSingle();
                Blend(Vector256.Load(ema + i), p0, vw).Store(ema + i);
                Blend(Vector256.Load(ema + i + 8), p1, vw).Store(ema + i + 8);
            }
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            var vw = Vector256.Create(w);
            for (; i <= n - 16; i += 16)
            {
                var (lo, hi) = Vector256.Widen(Vector256.Load(p + i));
                Blend(Vector256.Load(ema + i), Vector256.ShiftLeft(lo, 16).AsSingle(), vw).Store(ema + i);
                Blend(Vector256.Load(ema + i + 8), Vector256.ShiftLeft(hi, 16).AsSingle(), vw).Store(ema + i + 8);
            }
        }
        for (; i < n; i++) ema[i] = Blend(ema[i], FromBFloat16(p[i]), w);
    }

    private static void Float32FromFloat16(float* ema, Half* p, int n, float w)
    {
        float* widened = stackalloc float[Chunk];
        for (int i = 0; i < n; i += Chunk)
        {
            int m = Math.Min(Chunk, n - i);
            TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(p + i, m), new Span<float>(widened, m));
            Float32(ema + i, widened, m, w);
        }
    }

    private static void BFloat16(ushort* ema, ushort* p, int n, float w)
    {
        for (int i = 0; i < n; i++)
        {
            ema[i] = ToBFloat16(Blend(FromBFloat16(ema[i]), FromBFloat16(p[i]), w));
        }
    }

    private static void Float16(Half* ema, Half* p, int n, float w)
    {
        float* a = stackalloc float[Chunk];
        float* b = stackalloc float[Chunk];
        for (int i = 0; i < n; i += Chunk)
        {
            int m = Math.Min(Chunk, n - i);
            TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(ema + i, m), new Span<float>(a, m));
            TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(p + i, m), new Span<float>(b, m));
            Float32(a, b, m, w);
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

using System;
using System.Runtime.Intrinsics;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// BEMA's read-out <c>out = ema + α·(θ − θ₀)</c> in one pass over the elements, for the common CPU case (contiguous,
/// fp32 EMA, θ and θ₀ of one dtype, fp32 or bf16; out fp32 or the parameters' dtype). Each element is a subtract, a
/// multiply and an add, each rounded once in float32 (never contracted into an FMA), so any split of a tensor into
/// boxes gives the same bits. Other cases take TorchSharp ops with the same three roundings.
/// </summary>
internal static unsafe class BiasCorrection
{
    /// <summary>Writes the corrected weights into <paramref name="dest"/> (which may be <paramref name="live"/> itself).</summary>
    public static void Write(torch.Tensor dest, torch.Tensor ema, torch.Tensor live, torch.Tensor anchor, double alpha)
    {
        if (TryRaw(dest, ema, live, anchor, (float)alpha)) return;
        using var _ = torch.no_grad();
        using var d = live.to_type(ema.dtype, copy: true);
        InPlace.Release(d.sub_(anchor), d);
        InPlace.Release(d.mul_(alpha), d);
        InPlace.Release(d.add_(ema), d);
        InPlace.Release(dest.copy_(d), dest);
    }

    private static bool TryRaw(torch.Tensor dest, torch.Tensor ema, torch.Tensor live, torch.Tensor anchor, float alpha)
    {
        var p = live.dtype;
        if (ema.dtype != torch.ScalarType.Float32 || anchor.dtype != p || p is not (torch.ScalarType.Float32 or torch.ScalarType.BFloat16)) return false;
        if (dest.dtype != torch.ScalarType.Float32 && dest.dtype != p) return false;
        foreach (var t in (ReadOnlySpan<torch.Tensor>)[dest, ema, live, anchor])
        {
            if (t.device_type != DeviceType.CPU || !t.is_contiguous()) return false;
        }
        long n = ema.numel();
        if (live.numel() != n || anchor.numel() != n || dest.numel() != n) return false;
        if (n == 0) return true;
        var e = (float*)NativeTensor.DataPointer(ema);
        bool wide = p == torch.ScalarType.Float32, outWide = dest.dtype == torch.ScalarType.Float32;
        void* t0 = (void*)NativeTensor.DataPointer(live), a0 = (void*)NativeTensor.DataPointer(anchor), o = (void*)NativeTensor.DataPointer(dest);
        long start = 0;
        if (wide && outWide && Vector256.IsHardwareAccelerated)
        {
            // The same three roundings per lane (vector operators are never contracted into an FMA).
            var va = Vector256.Create(alpha);
            for (; start + Vector256<float>.Count <= n; start += Vector256<float>.Count)
            {
                var diff = Vector256.Load((float*)t0 + start) - Vector256.Load((float*)a0 + start);
                var scaled = diff * va;
                (scaled + Vector256.Load(e + start)).Store((float*)o + start);
            }
        }
        for (long j = start; j < n; j++)
        {
            float diff = wide ? ((float*)t0)[j] - ((float*)a0)[j] : Widen(((ushort*)t0)[j]) - Widen(((ushort*)a0)[j]);
            float scaled = diff * alpha;
            float r = scaled + e[j];
            if (outWide) ((float*)o)[j] = r;
            else ((ushort*)o)[j] = Narrow(r);
        }
        return true;
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

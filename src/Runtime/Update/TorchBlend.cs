using TorchSharp;

namespace EmaGen;

/// <summary>
/// The update with TorchSharp ops, for tensors the raw kernels do not take (other devices, non-contiguous layouts) and
/// for packed groups off the CPU: exactly <see cref="EmaKernels.Blend(float, float, float, float)"/>'s expression
/// (<c>shadow * d + parameter * w</c>, each product and the sum rounded in fp32, fp64 for fp64 shadows, the result
/// narrowed once), so a shadow does not depend on which path updated it. LibTorch has no fused multiply-add op to
/// match a fused kernel with; this is why the kernels do not fuse either. Shared by the dense and the sharded manager.
/// </summary>
internal static class TorchBlend
{
    /// <summary>Updates <paramref name="shadow"/> from <paramref name="parameter"/> (same shape); integer and bool shadows are copied.</summary>
    public static void Apply(torch.Tensor shadow, torch.Tensor parameter, double decay)
    {
        if (!DTypes.IsFloatingPoint(shadow.dtype))
        {
            InPlace.Release(shadow.copy_(parameter), shadow);
            return;
        }
        var compute = shadow.dtype == torch.ScalarType.Float64 ? torch.ScalarType.Float64 : torch.ScalarType.Float32;
        // The kernels' constants: fp32 math takes decay and 1 - decay rounded to fp32.
        double d = compute == torch.ScalarType.Float32 ? (float)decay : decay;
        double w = compute == torch.ScalarType.Float32 ? (float)(1.0 - decay) : 1.0 - decay;
        using var weighted = Weighted(parameter, compute, w);
        if (shadow.dtype == compute)
        {
            InPlace.Release(shadow.mul_(d), shadow);
            InPlace.Release(shadow.add_(weighted), shadow);
            return;
        }
        // A low-precision shadow: widened exactly, blended in fp32, narrowed once (round to nearest even).
        using var wide = shadow.to_type(compute);
        InPlace.Release(wide.mul_(d), wide);
        InPlace.Release(wide.add_(weighted), wide);
        InPlace.Release(shadow.copy_(wide), shadow);
    }

    // parameter * w as a new tensor of the compute dtype (bf16/fp16 widened exactly first).
    private static torch.Tensor Weighted(torch.Tensor parameter, torch.ScalarType compute, double w)
    {
        if (parameter.dtype == compute) return parameter.mul(w);
        using var wide = parameter.to_type(compute);
        return wide.mul(w);
    }
}

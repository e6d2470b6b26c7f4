using System;
using System.Linq;
using EmaGen.Tests.Models;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace EmaGen.Tests.Runtime;

/// <summary>
/// The bound every update path owes its users (docs/performance.md, "What a CUDA user gets"), for the profiles the
/// longer walks of <see cref="ExactBlendTests"/> and <see cref="TorchOpsPathTests"/> leave out: fp16 parameters on the
/// raw kernels, and low-precision shadows (bf16, fp16) on both paths, with the guard on and off (each its own kernel or
/// op sequence). After n steps a shadow is within min(n, 1/w)·u·(max|e| + 3·w·max|p − e|) of the float64 EMA of the same
/// (rounded) parameters, u the shadow dtype's unit roundoff: each step rounds its result once to the shadow's precision
/// (the fp32 arithmetic before that adds at most the 3·w·|p − e| term), and an older error shrinks by the decay.
/// </summary>
public sealed class EveryProfileBoundTests
{
    private static readonly double[] Decays = { 0.9, 0.8 };

    [Theory]
    [InlineData(ScalarType.Float16, false, false, NonFinitePolicy.KeepAndHeal)]
    [InlineData(ScalarType.Float16, false, false, NonFinitePolicy.Allow)]
    [InlineData(ScalarType.BFloat16, true, false, NonFinitePolicy.KeepAndHeal)]
    [InlineData(ScalarType.BFloat16, true, false, NonFinitePolicy.Allow)]
    [InlineData(ScalarType.Float16, true, false, NonFinitePolicy.KeepAndHeal)]
    [InlineData(ScalarType.Float16, true, false, NonFinitePolicy.Allow)]
    [InlineData(ScalarType.Float16, false, true, NonFinitePolicy.Allow)]
    [InlineData(ScalarType.BFloat16, true, true, NonFinitePolicy.KeepAndHeal)]
    [InlineData(ScalarType.BFloat16, true, true, NonFinitePolicy.Allow)]
    [InlineData(ScalarType.Float16, true, true, NonFinitePolicy.KeepAndHeal)]
    [InlineData(ScalarType.Float16, true, true, NonFinitePolicy.Allow)]
    public void AShadowStaysWithinTheBoundOfTheFloat64Ema(ScalarType dtype, bool lowPrecisionShadow, bool torchOps, NonFinitePolicy policy)
    {
        const int steps = 60;
        const int size = 257;
        torch.manual_seed(61);
        using var model = new SizedModel(dtype, size);
        // Shadows and parameters in [-1, 1], so that the bound (which scales with max|e|) is small beside the distance
        // between a shadow and the last parameters.
        using (torch.no_grad())
        {
            using var start = Uniform(size, dtype);
            model[0].copy_(start);
        }
        var options = new EmaOptions
        {
            Profiles = Decays.Select(d => new EmaProfileOptions($"decay_{d * 10}", EmaSchedule.Constant(d))).ToArray(),
            LowPrecisionShadow = lowPrecisionShadow,
            ForceTorchOps = torchOps,
            NonFinite = policy,
        };
        using var ema = new EmaManager<SizedModel>(model, options);
        var exact = Decays.Select(d => new Float64Ema(d, TensorValues.Doubles(model[0]))).ToArray();
        for (int step = 0; step < steps; step++)
        {
            using (torch.no_grad())
            {
                using var fresh = Uniform(size, dtype);
                model[0].copy_(fresh);
            }
            var p = TensorValues.Doubles(model[0]);
            foreach (var e in exact) e.Step(p);
            ema.Update(model);
        }
        Assert.Contains(torchOps ? "through TorchSharp ops" : "ran as one pass", ema.UpdatePath);
        var last = TensorValues.Doubles(model[0]);
        for (int k = 0; k < Decays.Length; k++)
        {
            var shadow = ema.Profiles[k]["leaves.0.w"];
            Assert.Equal(lowPrecisionShadow ? dtype : ScalarType.Float32, shadow.dtype);
            double bound = exact[k].Bound(steps, shadow.dtype);
            double worst = exact[k].Distance(shadow);
            Assert.True(worst <= bound, $"decay {Decays[k]} ({dtype} → {shadow.dtype}, {(torchOps ? "op path" : "raw")}, {policy}): |shadow − fp64| = {worst:G3} over the bound {bound:G3}");
            // Not vacuous: the average is far further than the bound from the last parameters.
            Assert.True(exact[k].DistanceFrom(last) > 5 * bound, $"decay {Decays[k]}: the bound {bound:G3} is too loose to test");
        }
    }

    private static Tensor Uniform(long size, ScalarType dtype)
    {
        using var values = torch.empty(size).uniform_(-1, 1);
        return values.to_type(dtype);
    }
}

using System;
using System.Collections.Generic;
using System.Linq;
using EmaGen.Tests.Models;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace EmaGen.Tests.Runtime;

/// <summary>
/// The update's fixed point is exactly the parameter: a weight that does not move keeps a shadow bit-equal to it on every
/// path (raw kernels single and paired, TorchSharp ops, sharded boxes, every:K decays rescaled and per call, the decay-0
/// copy of a start-after profile), for every parameter dtype and low-precision shadows; and the shadow of a moving
/// parameter stays within a derived bound of the float64 EMA.
/// </summary>
public sealed class ExactBlendTests
{
    private static readonly double[] Decays = { 0.999, 0.9999, 0.99999 };

    // Odd sizes: vector bodies and scalar tails.
    private static readonly long[] Sizes = { 212, 37 };

    public static IEnumerable<object[]> Paths()
    {
        foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16, ScalarType.Float16, ScalarType.Float64 })
        {
            foreach (var torchOps in new[] { false, true })
            {
                yield return new object[] { dtype, false, torchOps, false };
                yield return new object[] { dtype, false, torchOps, true };
            }
        }
        // Low-precision shadows (bf16/fp16 shadows of bf16/fp16 parameters), raw and op paths, dense and sharded.
        foreach (var dtype in new[] { ScalarType.BFloat16, ScalarType.Float16 })
        {
            foreach (var torchOps in new[] { false, true })
            {
                yield return new object[] { dtype, true, torchOps, false };
                yield return new object[] { dtype, true, torchOps, true };
            }
        }
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void AConstantParameterKeepsItsShadowBitEqualFor20000Updates(ScalarType dtype, bool lowPrecisionShadow, bool torchOps, bool sharded)
    {
        torch.manual_seed(31);
        using var model = new SizedModel(dtype, Sizes);
        // A -0.0 element on the raw paths (the kernels keep its sign; LibTorch's lerp_ gives +0.0, documented).
        if (!torchOps)
        {
            using var _ = torch.no_grad();
            for (int i = 0; i < Sizes.Length; i++) model[i][0] = torch.tensor(-0.0, dtype);
        }
        // Three decays as three profiles (two share a pass: the pair kernels for fp32/bf16), every:2 profiles with the
        // rescaled and the per-call decay, and a profile that copies for its first 5 steps (decay 0).
        var profiles = Decays.Select((d, i) => new EmaProfileOptions($"d{i}", EmaSchedule.Constant(d)))
            .Append(new EmaProfileOptions("every2", EmaSchedule.UpdateEvery(2, EmaSchedule.Constant(0.9999))))
            .Append(new EmaProfileOptions("every2call", EmaSchedule.UpdateEvery(2, EmaSchedule.Constant(0.9999), perCall: true)))
            .Append(new EmaProfileOptions("start5", EmaSchedule.StartAfter(5, EmaSchedule.Constant(0.999))))
            .ToArray();
        var options = new EmaOptions { Profiles = profiles, LowPrecisionShadow = lowPrecisionShadow, ForceTorchOps = torchOps };
        using EmaManagerBase<SizedModel> ema = sharded
            ? new ShardedEmaManager<SizedModel>(model, 1, 2, options)
            : new EmaManager<SizedModel>(model, options);
        for (int step = 0; step < 20_000; step++) ema.Update(model);
        Assert.Contains(torchOps ? "through TorchSharp ops" : "ran as one pass", ema.UpdatePath);
        foreach (var profile in (sharded ? ((ShardedEmaManager<SizedModel>)ema).Profiles.Cast<EmaProfileBase>() : ((EmaManager<SizedModel>)ema).Profiles))
        {
            for (int i = 0; i < Sizes.Length; i++)
            {
                var shadow = profile[$"leaves.{i}.w"];
                using var box = sharded ? model[i].narrow(0, Sizes[i] - shadow.shape[0], shadow.shape[0]) : model[i].alias();
                using var expected = box.to_type(shadow.dtype);
                Assert.True(TensorValues.Bits(expected).SequenceEqual(TensorValues.Bits(shadow)), $"{profile.Name} leaves.{i}.w moved off its constant parameter ({dtype})");
            }
        }
    }

    // A random walk for 5,000 updates at decay 0.999, against the same EMA in float64 from the same (rounded) parameters.
    // Bound: each fp32 step rounds p − e, w·(p − e) and e + w·(p − e), and w itself is 1 − decay rounded to fp32, so a
    // step adds at most u·(|e'| + 3·w·|p − e|), u = 2⁻²⁴ (less with a fused multiply-add); older errors shrink by the
    // decay each step, so the error never exceeds the largest per-step error divided by w = 1 − decay:
    // |e32 − e64| ≤ u·(max|e|/w + 3·max|p − e|) (Float64Ema.Bound, n being past 1/w). The test allows 1.01 times that.
    [Theory]
    [InlineData(ScalarType.Float32, false)]
    [InlineData(ScalarType.Float32, true)]
    [InlineData(ScalarType.BFloat16, false)]
    [InlineData(ScalarType.BFloat16, true)]
    public void AMovingParameterStaysWithinTheBoundOfTheFloat64Ema(ScalarType dtype, bool torchOps)
    {
        const double decay = 0.999;
        torch.manual_seed(32);
        using var model = new SizedModel(dtype, 257);
        using var ema = new EmaManager<SizedModel>(model, new EmaOptions { Decay = decay, ForceTorchOps = torchOps });
        var exact = new Float64Ema(decay, TensorValues.Doubles(model[0]));
        const int steps = 5_000;
        for (int step = 0; step < steps; step++)
        {
            using (torch.no_grad())
            {
                using var noise = torch.randn(257).mul_(HeldScalars.Hundredth).to_type(dtype);
                model[0].add_(noise, HeldScalars.One);
            }
            exact.Step(TensorValues.Doubles(model[0]));
            ema.Update(model);
        }
        double bound = exact.Bound(steps, ScalarType.Float32);
        double worst = exact.Distance(ema["leaves.0.w"]);
        Assert.True(worst <= bound, $"|fp32 − fp64| = {worst:G3} over the bound {bound:G3}");
        // Not vacuous: the walk carried the parameter far beyond the bound away from the average.
        Assert.True(exact.DistanceFrom(TensorValues.Doubles(model[0])) > 100 * bound);
    }

    [Fact]
    public void PowerFunctionAcceptsEdm2sWholeRangeOfSigmaRel()
    {
        // EDM2 takes any σ_rel below sqrt(1/12); γ is the largest root of its cubic.
        foreach (var sigma in new[] { 0.01, 0.05, 0.2, 0.28, 0.285, 0.2886 })
        {
            double gamma = PowerFunctionSchedule.GammaFromSigmaRel(sigma);
            double t = 1 / (sigma * sigma);
            Assert.True(gamma > 0, $"γ({sigma}) = {gamma}");
            Assert.True(Math.Abs(((gamma + 7) * gamma + (16 - t)) * gamma + (12 - t)) < 1e-6 * t, $"γ({sigma}) = {gamma} is not a root");
            Assert.Equal(sigma, PowerFunctionSchedule.SigmaRelFromGamma(gamma), 9);
            _ = EmaSchedule.PowerFunction(sigma);
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => EmaSchedule.PowerFunction(Math.Sqrt(1.0 / 12)));
        Assert.Throws<ArgumentOutOfRangeException>(() => EmaSchedule.PowerFunction(0.3));
        Assert.Throws<ArgumentOutOfRangeException>(() => EmaSchedule.PowerFunction(0));
    }
}

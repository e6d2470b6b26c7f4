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
/// The TorchSharp-op path (forced on the CPU: what a CUDA run executes) owes its users what every path does, not the raw
/// kernels' bits (issue 25 dropped that rule, so the op path may use the device's fused lerp_ and cut a unit into
/// slices): within a stated bound of the float64 EMA, the same bits from two identical runs, and a resumed run
/// bit-equal to an uninterrupted one; for fp32, bf16 and fp16 parameters, several decays, with the guard on and off;
/// and the same on units large enough to be cut into slices.
/// </summary>
public sealed class TorchOpsPathTests
{
    private static readonly double[] Decays = { 0.9, 0.999, 0.9999 };

    public static IEnumerable<object[]> Cases()
    {
        foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16, ScalarType.Float16 })
        {
            yield return new object[] { dtype, NonFinitePolicy.Allow };
            yield return new object[] { dtype, NonFinitePolicy.KeepAndHeal };
        }
    }

    // A random walk for 4,000 updates, three decays as three profiles, against the same EMAs in float64 from the same
    // (rounded) parameters. Bound (fp32 shadows, u = 2⁻²⁴): a step rounds p − e, w·(p − e) and e + w·(p − e), and w is
    // 1 − decay rounded to fp32, so it adds at most u·(|e'| + 3·w·|p − e|) (less with a fused multiply-add); an older
    // error shrinks by the decay each step, so after n steps |e32 − e64| ≤ min(n, 1/w)·u·(max|e| + 3·w·max|p − e|).
    // The test allows 1.01 times that.
    [Theory]
    [MemberData(nameof(Cases))]
    public void StaysWithinTheBoundOfTheFloat64EmaAndRepeatsItsBits(ScalarType dtype, NonFinitePolicy policy)
    {
        const int steps = 4_000;
        const int size = 257;
        torch.manual_seed(41);
        using var folder = TestPaths.NewTempFolder();
        using var model = new SizedModel(dtype, size, 13);
        using var twinModel = new SizedModel(dtype, size, 13);
        var resumedModel = new SizedModel(dtype, size, 13);
        Copy(model, twinModel);
        Copy(model, resumedModel);
        using var ema = new EmaManager<SizedModel>(model, Options(policy));
        using var twin = new EmaManager<SizedModel>(twinModel, Options(policy));
        var resumed = new EmaManager<SizedModel>(resumedModel, Options(policy));
        var exact = Decays.Select(d => new Float64Ema(d, TensorValues.Doubles(model[0]))).ToArray();
        for (int step = 0; step < steps; step++)
        {
            using (torch.no_grad())
            {
                using var noise = torch.randn(size).mul_(HeldScalars.Hundredth).to_type(dtype);
                model[0].add_(noise, HeldScalars.One);
                twinModel[0].copy_(model[0]);
                resumedModel[0].copy_(model[0]);
            }
            var p = TensorValues.Doubles(model[0]);
            foreach (var e in exact) e.Step(p);
            ema.Update(model);
            twin.Update(twinModel);
            if (step == steps / 2)
            {
                // Saved halfway and continued by a new manager of a new model object (as after a restart, so it packs).
                resumed.Save(folder["ckpt"]);
                resumed.Dispose();
                var restarted = new SizedModel(dtype, size, 13);
                Copy(resumedModel, restarted);
                resumedModel.Dispose();
                resumedModel = restarted;
                resumed = new EmaManager<SizedModel>(resumedModel, Options(policy));
                resumed.Load(folder["ckpt"]);
            }
            resumed.Update(resumedModel);
        }
        using var last = resumed;
        using var lastModel = resumedModel;
        Assert.Contains("through TorchSharp ops: 1 packed group(s)", ema.UpdatePath);
        Assert.Contains("through TorchSharp ops: 1 packed group(s)", resumed.UpdatePath);
        for (int k = 0; k < Decays.Length; k++)
        {
            var shadow = ema.Profiles[k]["leaves.0.w"];
            Assert.Equal(ScalarType.Float32, shadow.dtype);
            double bound = exact[k].Bound(steps, ScalarType.Float32);
            double worst = exact[k].Distance(shadow);
            Assert.True(worst <= bound, $"decay {Decays[k]} ({dtype}, {policy}): |op path − fp64| = {worst:G3} over the bound {bound:G3}");
            // Not vacuous: the walk carried the parameter far beyond the bound away from the average.
            Assert.True(exact[k].DistanceFrom(TensorValues.Doubles(model[0])) > 100 * bound);
            foreach (var name in ema.TrackedNames)
            {
                var bits = TensorValues.Bits(ema.Profiles[k][name]);
                Assert.True(bits.SequenceEqual(TensorValues.Bits(twin.Profiles[k][name])), $"two identical runs differ on {name}, decay {Decays[k]} ({dtype}, {policy})");
                Assert.True(bits.SequenceEqual(TensorValues.Bits(resumed.Profiles[k][name])), $"the resumed run differs on {name}, decay {Decays[k]} ({dtype}, {policy})");
            }
        }
    }

    // Units larger than a slice (a bf16 parameter widened for an fp32 shadow: 12.6M elements a slice; the guard's masks
    // and selections: 2.2M for fp32, 1.3M for a bf16 parameter with a bf16 shadow): two identical runs give the same
    // bits, and every shadow is within n·u·(max|e| + 3·w·max|p − e|) of the float64 EMA after n steps (u: the shadow
    // dtype's unit roundoff; the bound above with n < 1/w). Odd sizes, so the last slice is short.
    [Theory]
    [InlineData(ScalarType.BFloat16, false, NonFinitePolicy.Allow, 13_000_037)]
    [InlineData(ScalarType.Float32, false, NonFinitePolicy.KeepAndHeal, 5_000_037)]
    [InlineData(ScalarType.BFloat16, true, NonFinitePolicy.KeepAndHeal, 3_000_037)]
    public void ASlicedUnitRepeatsItsBitsAndStaysWithinTheBound(ScalarType dtype, bool lowPrecisionShadow, NonFinitePolicy policy, long large)
    {
        const int steps = 4;
        torch.manual_seed(42);
        var profiles = new[] { new EmaProfileOptions("fast", EmaSchedule.Constant(0.9)), new EmaProfileOptions("slow", EmaSchedule.Constant(0.999)) };
        var options = new EmaOptions { Profiles = profiles, ForceTorchOps = true, NonFinite = policy, LowPrecisionShadow = lowPrecisionShadow };
        using var model = new SizedModel(dtype, large, 37);
        using var twinModel = new SizedModel(dtype, large, 37);
        Copy(model, twinModel);
        using var straight = new EmaManager<SizedModel>(model, options);
        using var twin = new EmaManager<SizedModel>(twinModel, options);
        var exact = profiles.Select(_ => model[0].to_type(ScalarType.Float64, copy: true)).ToArray();
        var maxShadow = new double[profiles.Length];
        var maxGap = new double[profiles.Length];
        try
        {
            for (int step = 0; step < steps; step++)
            {
                using (torch.no_grad())
                {
                    using var fresh = torch.randn(large).to_type(dtype);
                    model[0].copy_(fresh);
                    twinModel[0].copy_(fresh);
                    using var p = fresh.to_type(ScalarType.Float64);
                    for (int k = 0; k < profiles.Length; k++)
                    {
                        double d = k == 0 ? 0.9 : 0.999;
                        using var gap = (p - exact[k]).abs_().max();
                        maxGap[k] = Math.Max(maxGap[k], gap.item<double>());
                        using var decay = d.ToScalar();
                        using var weight = (1 - d).ToScalar();
                        exact[k].mul_(decay).add_(p, weight);
                        using var top = exact[k].abs().max();
                        maxShadow[k] = Math.Max(maxShadow[k], top.item<double>());
                    }
                }
                straight.Update(model);
                twin.Update(twinModel);
            }
            Assert.Contains("through TorchSharp ops: 1 packed group(s)", straight.UpdatePath);
            for (int k = 0; k < profiles.Length; k++)
            {
                foreach (var name in straight.TrackedNames)
                {
                    Assert.True(TensorValues.Bits(straight.Profiles[k][name]).SequenceEqual(TensorValues.Bits(twin.Profiles[k][name])), $"two identical runs differ on {name}, profile {k}");
                }
                using var wide = straight.Profiles[k]["leaves.0.w"].to_type(ScalarType.Float64);
                double u = lowPrecisionShadow ? Math.Pow(2, -8) : Math.Pow(2, -24), w = k == 0 ? 0.1 : 0.001;
                double bound = 1.01 * steps * u * (maxShadow[k] + 3 * w * maxGap[k]);
                using var diff = (wide - exact[k]).abs_().max();
                Assert.True(diff.item<double>() <= bound, $"profile {k} ({dtype}, low-precision {lowPrecisionShadow}, {policy}): |op path − fp64| = {diff.item<double>():G3} over {bound:G3}");
                // Not vacuous: the shadow is far further than the bound from the last parameters.
                using var last = model[0].to_type(ScalarType.Float64);
                using var moved = (wide - last).abs_().max();
                Assert.True(moved.item<double>() > 10 * bound, $"{moved.item<double>():G3} vs {bound:G3}");
            }
        }
        finally
        {
            foreach (var t in exact) t.Dispose();
        }
    }

    // What a CUDA user's steady-state update costs the managed heap: nothing. A bf16 group widened for its fp32 shadows
    // is cut into slices (13M elements: two slices a profile), whose views are made at the first step and kept; a power
    // schedule moves the decay every step and refills its weight in place, not through a Scalar. The fp32 group is one
    // lerp_ a profile. The values still move (the update ran).
    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.BFloat16)]
    public void ASteadyStateUpdateAllocatesNothing(ScalarType dtype)
    {
        var options = new EmaOptions
        {
            Profiles = new[] { new EmaProfileOptions("constant", EmaSchedule.Constant(0.999)), new EmaProfileOptions("power", EmaSchedule.PowerFunction(0.05)) },
            ForceTorchOps = true,
            NonFinite = NonFinitePolicy.Allow,
        };
        torch.manual_seed(3);
        using var model = new SizedModel(dtype, 13_000_037, 37);
        using var ema = new EmaManager<SizedModel>(model, options);
        using (torch.no_grad()) model[0].add_(1);
        using var before = ema.Profiles[1]["leaves.0.w"].clone();
        long bytes = Allocations.OfSteadyState(() => ema.Update(model), warmup: 20, measured: 10);
        Assert.Contains("through TorchSharp ops: 1 packed group(s)", ema.UpdatePath);
        Assert.Equal(0, bytes);
        Assert.False(TensorValues.Bits(before).SequenceEqual(TensorValues.Bits(ema.Profiles[1]["leaves.0.w"])), "the power profile did not move");
    }

    // A trainer that runs each step in a dispose scope: what the op path keeps across steps (a sliced group's views,
    // scratch buffers, weights) is out of the scope, so the next step runs, and gives the bits of a run without scopes.
    [Fact]
    public void UpdatesInsideDisposeScopesKeepWhatTheOpPathKeeps()
    {
        var options = new EmaOptions { Decay = 0.99, ForceTorchOps = true, NonFinite = NonFinitePolicy.Allow };
        torch.manual_seed(4);
        using var model = new SizedModel(ScalarType.BFloat16, 13_000_037, 37);
        using var twinModel = new SizedModel(ScalarType.BFloat16, 13_000_037, 37);
        Copy(model, twinModel);
        using var scoped = new EmaManager<SizedModel>(model, options);
        using var plain = new EmaManager<SizedModel>(twinModel, options);
        for (int step = 0; step < 3; step++)
        {
            using (torch.no_grad())
            {
                model[0].add_(1);
                twinModel[0].add_(1);
            }
            using (torch.NewDisposeScope()) scoped.Update(model);
            plain.Update(twinModel);
        }
        Assert.Contains("through TorchSharp ops: 1 packed group(s)", scoped.UpdatePath);
        Assert.True(TensorValues.Bits(scoped["leaves.0.w"]).SequenceEqual(TensorValues.Bits(plain["leaves.0.w"])));
    }

    private static EmaOptions Options(NonFinitePolicy policy) => new()
    {
        Profiles = Decays.Select((d, i) => new EmaProfileOptions($"d{i}", EmaSchedule.Constant(d))).ToArray(),
        ForceTorchOps = true,
        NonFinite = policy,
    };

    private static void Copy(SizedModel from, SizedModel to)
    {
        using var _ = torch.no_grad();
        for (int i = 0; i < from.Count; i++) to[i].copy_(from[i]);
    }
}

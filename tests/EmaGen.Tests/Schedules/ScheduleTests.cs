using System;
using System.Collections.Generic;
using System.Linq;
using EmaGen.Tests.Models;
using EmaGen.Tests.Runtime;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;

namespace EmaGen.Tests.Schedules;

/// <summary>Each schedule against its formula (computed here independently), boundaries, and the UpdateEvery horizon.</summary>
public sealed class ScheduleTests
{
    [Fact]
    public void WarmupFollowsDiffusersIncludingCopyAndClamps()
    {
        var s = EmaSchedule.Warmup(invGamma: 1, power: 0.75, minDecay: 0.1, maxDecay: 0.999, updateAfterStep: 10);
        for (long step = 0; step <= 11; step++) Assert.Equal(0.0, s.DecayAt(step)); // s = step - 10 - 1 <= 0: copy
        Assert.Equal(Math.Max(0.1, 1 - Math.Pow(2, -0.75)), s.DecayAt(12));        // s = 1
        Assert.Equal(1 - Math.Pow(1 + 89, -0.75), s.DecayAt(100));
        Assert.Equal(0.999, s.DecayAt(100_000_000));                                 // clamped to maxDecay
        var low = EmaSchedule.Warmup(invGamma: 100, power: 1, minDecay: 0.5);
        Assert.Equal(0.5, low.DecayAt(3));                                           // 1 - 1/(1 + 2/100) < 0.5: clamped up
    }

    [Fact]
    public void HalfLifeWithAndWithoutRampUp()
    {
        Assert.Equal(Math.Pow(0.5, 1 / 500.0), EmaSchedule.HalfLife(500).DecayAt(1));
        var ramp = EmaSchedule.HalfLife(500, rampUpRatio: 0.05);
        Assert.Equal(Math.Pow(0.5, 1 / (0.05 * 1000)), ramp.DecayAt(1000));
        Assert.Equal(Math.Pow(0.5, 1 / 500.0), ramp.DecayAt(20_000));
    }

    [Theory]
    [InlineData(0.05, 16.97)]
    [InlineData(0.10, 6.94)]
    public void SigmaRelAndGammaConvertBothWays(double sigmaRel, double gamma)
    {
        double g = PowerFunctionSchedule.GammaFromSigmaRel(sigmaRel);
        Assert.Equal(gamma, g, 2);
        Assert.Equal(sigmaRel, PowerFunctionSchedule.SigmaRelFromGamma(g), 12);
        // The root really solves EDM2's cubic.
        double t = 1 / (sigmaRel * sigmaRel);
        Assert.True(Math.Abs(g * g * g + 7 * g * g + (16 - t) * g + (12 - t)) < 1e-6);
    }

    [Fact]
    public void PowerFunctionIsEdm2sBeta()
    {
        var s = new PowerFunctionSchedule(6.94);
        Assert.Equal(0.0, s.DecayAt(1));
        Assert.Equal(Math.Pow(1 - 1.0 / 1000, 7.94), s.DecayAt(1000));
    }

    [Fact]
    public void StartAfterCopiesThenCountsFromTheStart()
    {
        var s = EmaSchedule.StartAfter(5, EmaSchedule.Constant(0.9));
        Assert.All(Enumerable.Range(1, 5), step => Assert.Equal(0.0, s.DecayAt(step)));
        Assert.Equal(0.9, s.DecayAt(6));
        var p = EmaSchedule.StartAfter(10, new PowerFunctionSchedule(3));
        Assert.Equal(0.0, p.DecayAt(11));                          // inner step 1: the power function starts by copying
        Assert.Equal(Math.Pow(0.5, 4), p.DecayAt(12));             // inner step 2: (1 - 1/2)^(3+1)
    }

    [Fact]
    public void UpdateEveryRescalesToThePerStepHorizon()
    {
        var constant = EmaSchedule.UpdateEvery(10, EmaSchedule.Constant(0.99));
        Assert.False(constant.UpdatesAt(9));
        Assert.True(constant.UpdatesAt(10));
        Assert.Equal(Math.Pow(0.99, 10), constant.DecayAt(10), 14);
        var power = EmaSchedule.UpdateEvery(100, new PowerFunctionSchedule(6.94));
        Assert.Equal(Math.Pow(1 - 100.0 / 5000, 7.94), power.DecayAt(5000), 12); // EDM2's Δt = k form
        var legacy = EmaSchedule.UpdateEvery(10, EmaSchedule.Constant(0.99), perCall: true);
        Assert.Equal(0.99, legacy.DecayAt(10));
    }

    [Theory]
    [InlineData(10)]
    [InlineData(100)]
    public void UpdateEveryKeepsThePowerFunctionsCentreOfMass(int k)
    {
        // For the parameter trajectory p_t = t the EMA value is the profile's centre of mass.
        var gamma = PowerFunctionSchedule.GammaFromSigmaRel(0.10);
        double reference = Average(new PowerFunctionSchedule(gamma), 100_000);
        double every = Average(EmaSchedule.UpdateEvery(k, new PowerFunctionSchedule(gamma)), 100_000);
        double perCall = Average(EmaSchedule.UpdateEvery(k, new PowerFunctionSchedule(gamma), perCall: true), 100_000);
        Assert.True(Math.Abs(every - reference) / reference < 0.01, $"k={k}: {every} vs {reference}");
        Assert.True(Math.Abs(perCall - reference) / reference > 0.01, $"k={k}: the per-call form should drift ({perCall} vs {reference})");
    }

    [Fact]
    public void HalfLifeIsThePerStepHorizonOfTheDecayApplied()
    {
        Assert.Equal(500, EmaSchedule.HalfLife(500).HalfLifeAt(7), 9);
        Assert.Equal(Math.Log(0.5) / Math.Log(0.99), EmaSchedule.Constant(0.99).HalfLifeAt(1), 9);
        Assert.Equal(Math.Log(0.5) / Math.Log(0.99), EmaSchedule.UpdateEvery(25, EmaSchedule.Constant(0.99)).HalfLifeAt(50), 6);
        // Per-call semantics stretch the horizon k-fold: the unscaled decay now covers k steps.
        Assert.Equal(25 * Math.Log(0.5) / Math.Log(0.99), EmaSchedule.UpdateEvery(25, EmaSchedule.Constant(0.99), perCall: true).HalfLifeAt(50), 6);
        Assert.Equal(0, EmaSchedule.PowerFunction(0.1).HalfLifeAt(1));
        Assert.Equal(double.PositiveInfinity, EmaSchedule.Constant(1).HalfLifeAt(3));
        Assert.Equal(1, EmaSchedule.StartAfter(10, EmaSchedule.UpdateEvery(4, EmaSchedule.Constant(0.9))).StepsPerUpdate(5));
        Assert.Equal(4, EmaSchedule.StartAfter(10, EmaSchedule.UpdateEvery(4, EmaSchedule.Constant(0.9))).StepsPerUpdate(14));
    }

    [Fact]
    public void SchedulesAreEqualWhenOfOneTypeAndDescribedAlike()
    {
        Assert.Equal(EmaSchedule.UpdateEvery(3, EmaSchedule.PowerFunction(0.05)), EmaSchedule.UpdateEvery(3, EmaSchedule.PowerFunction(0.05)));
        Assert.True(EmaSchedule.Constant(0.9) == EmaScheduleParser.Parse("constant:0.9"));
        Assert.Equal(EmaSchedule.Constant(0.9).GetHashCode(), EmaScheduleParser.Parse("constant:0.9").GetHashCode());
        Assert.True(EmaSchedule.Constant(0.9) != EmaSchedule.Constant(0.99));
        Assert.NotEqual(EmaSchedule.StartAfter(3, EmaSchedule.Constant(0.9)), EmaSchedule.StartAfter(4, EmaSchedule.Constant(0.9)));
        Assert.NotEqual<EmaSchedule>(new OwnSchedule("Constant(decay=0.9)"), EmaSchedule.Constant(0.9));
        Assert.Equal<EmaSchedule>(new OwnSchedule("mine"), new OwnSchedule("mine"));
    }

    // A schedule of the user's own, with a chosen description.
    private sealed class OwnSchedule(string text) : EmaSchedule
    {
        public override double DecayAt(long step) => 0.9;

        public override string Describe() => text;
    }

    [Fact]
    public void ManagerAppliesTheScheduleAndKeepsMaximumAndCurrentApart()
    {
        using var model = new BareParameters(reflection: false);
        var schedule = EmaSchedule.Warmup(maxDecay: 0.999);
        using var ema = new EmaManager<BareParameters>(model, new EmaOptions { Schedule = schedule });
        Assert.True(double.IsNaN(ema.CurrentDecay));
        UpdateNumericsTests.RandomizeParameters(model);
        ema.Update(model);                                           // step 1: copy
        Assert.Equal(0.0, ema.CurrentDecay);
        Assert.Equal(model.named_parameters().First().parameter.data<float>().ToArray(), ema["alpha"].data<float>().ToArray());
        ema.Update(model);
        Assert.Equal(schedule.DecayAt(2), ema.CurrentDecay);
        Assert.Equal(0.999, ((WarmupSchedule)ema.Schedule).MaxDecay);
        Assert.Equal(2, ema.Step);
    }

    [Theory]
    [InlineData("constant:0.999", "Constant(decay=0.999)")]
    [InlineData("warmup:power=0.75,max=0.99,after=10", "Warmup(invGamma=1, power=0.75, minDecay=0, maxDecay=0.99, updateAfterStep=10)")]
    [InlineData("halflife:500,ramp=0.05", "HalfLife(steps=500, rampUpRatio=0.05)")]
    [InlineData("power:gamma=6.94", "PowerFunction(gamma=6.94)")]
    [InlineData("startafter:100:constant:0.9", "StartAfter(100, Constant(decay=0.9))")]
    [InlineData("every:10:percall:constant:0.9", "UpdateEvery(10, perCall, Constant(decay=0.9))")]
    [InlineData("every:4:halflife:20", "UpdateEvery(4, rescaled, HalfLife(steps=20, rampUpRatio=none))")]
    public void SpecificationsParse(string text, string description) => Assert.Equal(description, EmaScheduleParser.Parse(text).Describe());

    [Theory]
    [InlineData("nope")]
    [InlineData("constant:x")]
    [InlineData("constant:1.5")]
    [InlineData("every:3")]
    public void BadSpecificationsSayWhatIsAccepted(string text)
    {
        var e = Assert.ThrowsAny<ArgumentException>(() => EmaScheduleParser.Parse(text));
        Assert.False(string.IsNullOrWhiteSpace(e.Message));
    }

    [Fact]
    public void PowerSpecificationUsesSigmaRel() =>
        Assert.Equal(PowerFunctionSchedule.GammaFromSigmaRel(0.05), ((PowerFunctionSchedule)EmaScheduleParser.Parse("power:0.05")).Gamma);

    private static double Average(EmaSchedule schedule, int steps)
    {
        double ema = 0;
        for (long t = 1; t <= steps; t++)
        {
            if (!schedule.UpdatesAt(t)) continue;
            double d = schedule.DecayAt(t);
            ema = d * ema + (1 - d) * t;
        }
        return ema;
    }
}

/// <summary>Swap and resume: bit-exact restoration and bit-identical continuation for every schedule.</summary>
public sealed class SwapAndResumeTests
{
    [Fact]
    public void SwapRestoresBitExactlyAfterNormalExitAndAfterAnException()
    {
        using var model = new NestedModel(reflection: false);
        using var ema = new EmaManager<NestedModel>(model, 0.5);
        UpdateNumericsTests.RandomizeParameters(model);
        ema.Update(model);
        var own = Weights(model);
        var averaged = ema.TrackedNames.ToDictionary(n => n, n => ema[n].data<float>().ToArray());

        using (var swap = ema.SwapInto(model))
        {
            Assert.Equal(averaged, Weights(model));
            Assert.Throws<InvalidOperationException>(() => ema.Update(model));
            Assert.Throws<InvalidOperationException>(() => ema.StateDict());
            Assert.Equal((9, 0), swap.Counts);
            // Nothing was copied: each parameter now uses its shadow's storage.
            var middle = model.named_parameters().First(p => p.name == "middle.weight").parameter;
            Assert.Equal(NativeTensor.DataPointer(ema["middle.weight"]), NativeTensor.DataPointer(middle));
        }
        Assert.Equal(own, Weights(model));
        Assert.Equal(averaged, ema.TrackedNames.ToDictionary(n => n, n => ema[n].data<float>().ToArray()));

        Assert.Throws<ApplicationException>((Action)(() =>
        {
            using var swap = ema.SwapInto(model);
            throw new ApplicationException("evaluation failed");
        }));
        Assert.Equal(own, Weights(model));
        ema.Update(model);
    }

    [Fact]
    public void SwapOfAPackedModelRepointsAndRestoresItsFlatBuffer()
    {
        using var model = new SizedModel(torch.ScalarType.Float32, 5, 70, 3000);
        using var ema = new EmaManager<SizedModel>(model, new EmaOptions { Decay = 0.5, PackParameters = true });
        UpdateNumericsTests.RandomizeParameters(model);
        ema.Update(model);
        var pointers = Enumerable.Range(0, model.Count).Select(i => NativeTensor.DataPointer(model[i])).ToList();
        var own = Enumerable.Range(0, model.Count).Select(i => model[i].data<float>().ToArray()).ToList();
        var averaged = ema.TrackedNames.Select(n => ema[n].data<float>().ToArray()).ToList();
        using (var swap = ema.SwapInto(model))
        {
            Assert.Equal((3, 0), swap.Counts);
            Assert.Equal(averaged, Enumerable.Range(0, model.Count).Select(i => model[i].data<float>().ToArray()).ToList());
        }
        Assert.Equal(pointers, Enumerable.Range(0, model.Count).Select(i => NativeTensor.DataPointer(model[i])).ToList());
        Assert.Equal(own, Enumerable.Range(0, model.Count).Select(i => model[i].data<float>().ToArray()).ToList());

        // Still packed: the next update is exactly the kernels' blend over the restored parameters.
        ema.Update(model);
        for (int i = 0; i < model.Count; i++)
        {
            var expected = averaged[i].Zip(own[i], (e, p) => Lerp.Of(e, p, 0.5)).ToArray();
            Assert.Equal(expected, ema.TrackedNames.Select(n => ema[n].data<float>().ToArray()).ElementAt(i));
        }
    }

    [Fact]
    public void SwapOfLowPrecisionParametersKeepsTheFp32Shadow()
    {
        using var model = new SizedModel(torch.ScalarType.BFloat16, 5, 65);
        using var ema = new EmaManager<SizedModel>(model, 0.9);
        UpdateNumericsTests.RandomizeParameters(model);
        ema.Update(model);
        var shadows = ema.TrackedNames.ToDictionary(n => n, n => ema[n].data<float>().ToArray());
        var own = Enumerable.Range(0, model.Count).Select(i => model[i].to_type(torch.ScalarType.Float32).data<float>().ToArray()).ToList();
        using (var swap = ema.SwapInto(model))
        {
            Assert.Equal((0, 2), swap.Counts);
            using var expected = ema["leaves.1.w"].to_type(torch.ScalarType.BFloat16).to_type(torch.ScalarType.Float32);
            Assert.Equal(expected.data<float>().ToArray(), model[1].to_type(torch.ScalarType.Float32).data<float>().ToArray());
        }
        Assert.Equal(own, Enumerable.Range(0, model.Count).Select(i => model[i].to_type(torch.ScalarType.Float32).data<float>().ToArray()).ToList());
        Assert.Equal(shadows, ema.TrackedNames.ToDictionary(n => n, n => ema[n].data<float>().ToArray()));
    }

    public static IEnumerable<object[]> Schedules() => new List<object[]>
    {
        new object[] { EmaSchedule.Constant(0.9) },
        new object[] { EmaSchedule.Warmup(invGamma: 1, power: 0.75, maxDecay: 0.99, updateAfterStep: 2) },
        new object[] { EmaSchedule.HalfLife(3, rampUpRatio: 0.5) },
        new object[] { EmaSchedule.PowerFunction(0.10) },
        new object[] { EmaSchedule.StartAfter(3, EmaSchedule.Constant(0.8)) },
        new object[] { EmaSchedule.UpdateEvery(3, EmaSchedule.PowerFunction(0.05)) },
    };

    [Theory]
    [MemberData(nameof(Schedules))]
    public void ResumeIsBitIdenticalToAnUninterruptedRun(EmaSchedule schedule)
    {
        using var folder = TestPaths.NewTempFolder();
        const int total = 12, split = 5;
        var trajectory = Enumerable.Range(0, total).Select(i =>
        {
            torch.manual_seed(100 + i);
            return torch.randn(3).data<float>().ToArray();
        }).ToList();

        // Three models with the same initial weights: one trained straight through, one saved mid-way, one resumed.
        using var straightModel = new BareParameters(reflection: false);
        using var firstModel = new BareParameters(reflection: false);
        using var secondModel = new BareParameters(reflection: false);
        CopyFrom(straightModel, firstModel);
        CopyFrom(straightModel, secondModel);

        using var straight = new EmaManager<BareParameters>(straightModel, new EmaOptions { Schedule = schedule });
        for (int i = 0; i < total; i++) Step(straightModel, straight, trajectory[i]);

        using var first = new EmaManager<BareParameters>(firstModel, new EmaOptions { Schedule = schedule });
        for (int i = 0; i < split; i++) Step(firstModel, first, trajectory[i]);
        first.Save(folder["ckpt"]);

        using var second = new EmaManager<BareParameters>(secondModel, new EmaOptions { Schedule = schedule });
        second.Load(folder["ckpt"]);
        Assert.Equal(split, second.Step);
        for (int i = split; i < total; i++) Step(secondModel, second, trajectory[i]);

        foreach (var name in straight.TrackedNames)
        {
            Assert.Equal(straight[name].data<float>().ToArray(), second[name].data<float>().ToArray());
        }
        var mismatch = Assert.Throws<ArgumentException>(() =>
        {
            using var other = new EmaManager<BareParameters>(secondModel, new EmaOptions { Schedule = EmaSchedule.Constant(0.123) });
            other.Load(folder["ckpt"]);
        });
        Assert.Contains(schedule.Describe(), mismatch.Message);
    }

    // Only "alpha" moves along the shared trajectory; the other parameters keep the values the first model had.
    private static void Step(BareParameters model, EmaManager<BareParameters> ema, float[] alpha)
    {
        using (torch.no_grad())
        {
            using var values = torch.tensor(alpha);
            model.named_parameters().First(p => p.name == "alpha").parameter.copy_(values);
        }
        ema.Update(model);
    }

    private static void CopyFrom(BareParameters from, BareParameters to)
    {
        using var _ = torch.no_grad();
        var source = from.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var (name, p) in to.named_parameters()) p.copy_(source[name]);
    }

    private static Dictionary<string, float[]> Weights(torch.nn.Module model) =>
        model.named_parameters().ToDictionary(p => p.name, p => p.parameter.data<float>().ToArray());
}

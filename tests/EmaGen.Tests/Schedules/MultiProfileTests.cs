using System;
using System.Collections.Generic;
using System.Linq;
using EmaGen.Tests.Models;
using EmaGen.Tests.Runtime;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;

namespace EmaGen.Tests.Schedules;

/// <summary>Several profiles in one manager: one fused pass equal to independent managers, typed access, swap, save and resume.</summary>
public sealed class MultiProfileTests
{
    // Two power functions, a constant and an every-3-steps profile, so some steps update only a subset.
    private static EmaProfileOptions[] FourProfiles() =>
    [
        new("sigma050", EmaSchedule.PowerFunction(0.05)),
        new("sigma100", EmaSchedule.PowerFunction(0.10)),
        new("slow", EmaSchedule.Constant(0.999)),
        new("every3", EmaSchedule.UpdateEvery(3, EmaSchedule.Constant(0.9))),
    ];

    [Theory]
    [InlineData(torch.ScalarType.Float32, false, 1)]
    [InlineData(torch.ScalarType.Float32, false, 2)]
    [InlineData(torch.ScalarType.Float32, true, 2)]
    [InlineData(torch.ScalarType.BFloat16, false, 2)]
    [InlineData(torch.ScalarType.BFloat16, true, 1)]
    public void FusedUpdateEqualsIndependentManagersBitwise(torch.ScalarType dtype, bool pack, int threads)
    {
        torch.manual_seed(7);
        // Odd sizes for the kernels' tails, and more than a million elements so two threads really split the work.
        using var model = new SizedModel(dtype, 3, 2049, 70_001, (1 << 20) + 5);
        var profiles = FourProfiles();
        using var fused = new EmaManager<SizedModel>(model, new EmaOptions { Profiles = profiles, PackParameters = pack, Threads = threads });
        var single = profiles.Select(p => new EmaManager<SizedModel>(model, new EmaOptions { Schedule = p.Schedule, Threads = 1 })).ToList();
        try
        {
            for (int step = 0; step < 7; step++)
            {
                UpdateNumericsTests.RandomizeParameters(model);
                fused.Update(model);
                foreach (var s in single) s.Update(model);
            }
            Assert.Equal(profiles.Length, fused.Profiles.Count);
            for (int k = 0; k < profiles.Length; k++)
            {
                var profile = fused.Profile(profiles[k].Name);
                Assert.Equal(k, profile.Index);
                Assert.Equal(single[k].CurrentDecay, profile.CurrentDecay);
                foreach (var name in fused.TrackedNames)
                {
                    Assert.Equal(single[k][name].data<float>().ToArray(), profile[name].data<float>().ToArray());
                }
            }
            // The profiles really differ: every3 last updated at step 6, slow barely moved.
            Assert.NotEqual(fused.Profile("slow")["leaves.0.w"].data<float>().ToArray(), fused.Profile("every3")["leaves.0.w"].data<float>().ToArray());
            Assert.Equal(4 * single[0].ShadowBytes, fused.ShadowBytes);
        }
        finally
        {
            foreach (var s in single) s.Dispose();
        }
    }

    [Fact]
    public void BuffersAndLowPrecisionShadowsFuseLikeIndependentManagers()
    {
        torch.manual_seed(8);
        using var norm = new NormModel();
        var profiles = FourProfiles();
        using var fused = new EmaManager<NormModel>(norm, new EmaOptions { Profiles = profiles, TrackBuffers = true });
        var single = profiles.Select(p => new EmaManager<NormModel>(norm, new EmaOptions { Schedule = p.Schedule, TrackBuffers = true })).ToList();
        using var half = new SizedModel(torch.ScalarType.BFloat16, 5, 4099);
        using var fusedHalf = new EmaManager<SizedModel>(half, new EmaOptions { Profiles = profiles, LowPrecisionShadow = true });
        var singleHalf = profiles.Select(p => new EmaManager<SizedModel>(half, new EmaOptions { Schedule = p.Schedule, LowPrecisionShadow = true })).ToList();
        try
        {
            for (int step = 0; step < 5; step++)
            {
                norm.train();
                using (torch.no_grad()) norm.call(torch.randn(8, 4)).Dispose(); // moves running stats and num_batches_tracked
                UpdateNumericsTests.RandomizeParameters(norm);
                UpdateNumericsTests.RandomizeParameters(half);
                fused.Update(norm);
                fusedHalf.Update(half);
                foreach (var s in single) s.Update(norm);
                foreach (var s in singleHalf) s.Update(half);
            }
            for (int k = 0; k < profiles.Length; k++)
            {
                foreach (var name in fused.TrackedNames)
                {
                    var expected = single[k][name];
                    var actual = fused.Profiles[k][name];
                    Assert.Equal(expected.dtype, actual.dtype);
                    Assert.True(expected.bytes.SequenceEqual(actual.bytes), $"profile {profiles[k].Name}: {name}");
                }
                foreach (var name in fusedHalf.TrackedNames)
                {
                    Assert.Equal(torch.ScalarType.BFloat16, fusedHalf.Profiles[k][name].dtype);
                    Assert.True(singleHalf[k][name].bytes.SequenceEqual(fusedHalf.Profiles[k][name].bytes), $"bf16 profile {profiles[k].Name}: {name}");
                }
            }
            Assert.Equal(5L, fused.Profile("slow")["bn.num_batches_tracked"].item<long>());
        }
        finally
        {
            foreach (var s in single) s.Dispose();
            foreach (var s in singleHalf) s.Dispose();
        }
    }

    [Fact]
    public void EachProfileHasItsOwnTypedShadowAndTheManagerActsOnTheFirst()
    {
        using var model = new NestedModel(reflection: false);
        using var ema = new EmaManager<NestedModel>(model, new EmaOptions { Profiles = FourProfiles() });
        var fast = ema.Profile("sigma100");
        Assert.Same(fast["middle.weight"], fast.Shadow.middle.weight);
        Assert.Same(ema.Profiles[0]["first.proj.bias"], ema.Shadow.first.proj.bias);
        Assert.NotSame(ema.Shadow.middle.weight, fast.Shadow.middle.weight);
        Assert.Equal(ema.Profiles[0].Schedule, ema.Schedule);
        var missing = Assert.Throws<KeyNotFoundException>(() => ema.Profile("nope"));
        Assert.Contains("'sigma050'", missing.Message);
    }

    [Fact]
    public void OptionsRejectBadProfiles()
    {
        using var model = new BareParameters(reflection: false);
        Assert.Throws<ArgumentException>(() => new EmaManager<BareParameters>(model, new EmaOptions { Profiles = [new("a.b", EmaSchedule.Constant(0.9))] }));
        Assert.Throws<ArgumentException>(() => new EmaManager<BareParameters>(model, new EmaOptions { Profiles = [new("9lives", EmaSchedule.Constant(0.9))] }));
        Assert.Throws<ArgumentException>(() => new EmaManager<BareParameters>(model, new EmaOptions { Profiles = [] }));
        var twice = Assert.Throws<ArgumentException>(() => new EmaManager<BareParameters>(model, new EmaOptions
        {
            Profiles = [new("a", EmaSchedule.Constant(0.9)), new("a", EmaSchedule.Constant(0.99))],
        }));
        Assert.Contains("'a'", twice.Message);
        Assert.Throws<ArgumentException>(() => new EmaManager<BareParameters>(model, new EmaOptions
        {
            Schedule = EmaSchedule.Constant(0.9),
            Profiles = [new("a", EmaSchedule.Constant(0.9))],
        }));
    }

    [Fact]
    public void SwapAndCopyUseTheChosenProfile()
    {
        using var model = new NestedModel(reflection: false);
        using var ema = new EmaManager<NestedModel>(model, new EmaOptions { Profiles = FourProfiles() });
        for (int i = 0; i < 4; i++)
        {
            UpdateNumericsTests.RandomizeParameters(model);
            ema.Update(model);
        }
        var own = Weights(model);
        var profile = ema.Profile("sigma100");
        var averaged = ema.TrackedNames.ToDictionary(n => n, n => profile[n].data<float>().ToArray());
        Assert.NotEqual(averaged, ema.TrackedNames.ToDictionary(n => n, n => ema[n].data<float>().ToArray()));
        using (profile.SwapInto(model))
        {
            Assert.Equal(averaged, Weights(model));
            Assert.Throws<InvalidOperationException>(() => ema.Update(model));
            Assert.Throws<InvalidOperationException>(() => ema.Profile("slow").SwapInto(model));
        }
        Assert.Equal(own, Weights(model));
        Assert.Equal(averaged, ema.TrackedNames.ToDictionary(n => n, n => profile[n].data<float>().ToArray()));

        using var export = new NestedModel(reflection: false);
        ema.Profile("slow").CopyTo(export);
        Assert.Equal(ema.Profile("slow")["middle.weight"].data<float>().ToArray(), Weights(export)["middle.weight"]);
    }

    [Fact]
    public void ResumeOfEveryProfileIsBitIdenticalAndOneProfileLoadsOnItsOwn()
    {
        using var folder = TestPaths.NewTempFolder();
        const int total = 14, split = 8;
        torch.manual_seed(3);
        var trajectory = Enumerable.Range(0, total).Select(_ => torch.randn(3).data<float>().ToArray()).ToList();
        using var straightModel = new BareParameters(reflection: false);
        using var resumedModel = new BareParameters(reflection: false);
        CopyWeights(straightModel, resumedModel);

        using var straight = new EmaManager<BareParameters>(straightModel, new EmaOptions { Profiles = FourProfiles() });
        using var first = new EmaManager<BareParameters>(resumedModel, new EmaOptions { Profiles = FourProfiles() });
        for (int i = 0; i < total; i++) Step(straightModel, straight, trajectory[i]);
        for (int i = 0; i < split; i++) Step(resumedModel, first, trajectory[i]);
        first.Save(folder["ckpt"]);

        using var second = new EmaManager<BareParameters>(resumedModel, new EmaOptions { Profiles = FourProfiles() });
        second.Load(folder["ckpt"]);
        Assert.Equal(split, second.Step);
        for (int i = split; i < total; i++) Step(resumedModel, second, trajectory[i]);
        for (int k = 0; k < straight.Profiles.Count; k++)
        {
            foreach (var name in straight.TrackedNames)
            {
                Assert.Equal(straight.Profiles[k][name].data<float>().ToArray(), second.Profiles[k][name].data<float>().ToArray());
            }
        }

        // Each profile is a complete single-profile checkpoint under its own prefix.
        using var alone = new EmaManager<BareParameters>(resumedModel, new EmaOptions { Schedule = EmaSchedule.PowerFunction(0.10) });
        alone.Load(folder["ckpt"], prefix: "ema.sigma100.");
        Assert.Equal(split, alone.Step);
        Assert.Equal(first.Profile("sigma100")["alpha"].data<float>().ToArray(), alone["alpha"].data<float>().ToArray());
    }

    [Fact]
    public void CheckpointsStoreTheConfiguredAndTheCurrentDecayApartAndALoadRestoresTheCurrentOne()
    {
        using var folder = TestPaths.NewTempFolder();
        torch.manual_seed(4);
        using var model = new BareParameters(reflection: false);
        var options = new EmaOptions { Decay = 0.95, Profiles = FourProfiles() };
        using var saved = new EmaManager<BareParameters>(model, options);
        for (int i = 0; i < 5; i++) Step(model, saved, torch.randn(3).data<float>().ToArray());
        saved.Save(folder["multi"]);

        var reader = EmaGen.Dcp.DcpReader.Open(folder["multi"]);
        foreach (var profile in saved.Profiles)
        {
            // Every profile subtree: the configured constant decay under 'decay', the last applied one under 'current_decay'.
            Assert.Equal(0.95, reader.ReadValue($"ema.{profile.Name}._emagen.decay"));
            Assert.False(double.IsNaN(profile.CurrentDecay));
            Assert.Equal(profile.CurrentDecay, reader.ReadValue($"ema.{profile.Name}._emagen.current_decay"));
        }

        using var dense = new EmaManager<BareParameters>(model, options);
        Assert.True(double.IsNaN(dense.Profiles[1].CurrentDecay));
        dense.Load(folder["multi"]);
        Assert.Equal(saved.Profiles.Select(p => p.CurrentDecay), dense.Profiles.Select(p => p.CurrentDecay));

        // The sharded manager writes and restores the same values.
        using var sharded = new ShardedEmaManager<BareParameters>(model, 0, 1, options);
        sharded.Load(folder["multi"]);
        Assert.Equal(saved.Profiles.Select(p => p.CurrentDecay), sharded.Profiles.Select(p => p.CurrentDecay));
        sharded.Save(folder["sharded"], "d1", TimeSpan.FromSeconds(30));
        using var back = new EmaManager<BareParameters>(model, options);
        back.Load(folder["sharded"]);
        Assert.Equal(saved.Profiles.Select(p => p.CurrentDecay), back.Profiles.Select(p => p.CurrentDecay));

        // A single profile with a schedule: 'decay' stays the configured constant, the applied decay is stored beside it.
        using var single = new EmaManager<BareParameters>(model, new EmaOptions { Decay = 0.9, Schedule = EmaSchedule.PowerFunction(0.10) });
        for (int i = 0; i < 3; i++) single.Update(model);
        single.Save(folder["single"]);
        var singleReader = EmaGen.Dcp.DcpReader.Open(folder["single"]);
        Assert.Equal(0.9, singleReader.ReadValue("ema._emagen.decay"));
        Assert.Equal(single.CurrentDecay, singleReader.ReadValue("ema._emagen.current_decay"));
        Assert.NotEqual(0.9, single.CurrentDecay);
    }

    [Fact]
    public void MismatchedProfilesAreClearErrorsAndChangeNothing()
    {
        using var folder = TestPaths.NewTempFolder();
        using var model = new BareParameters(reflection: false);
        using var saved = new EmaManager<BareParameters>(model, new EmaOptions { Profiles = FourProfiles() });
        UpdateNumericsTests.RandomizeParameters(model);
        saved.Update(model);
        saved.Save(folder["multi"]);

        UpdateNumericsTests.RandomizeParameters(model);
        using var single = new EmaManager<BareParameters>(model, 0.9);
        var intoSingle = Assert.Throws<ArgumentException>(() => single.Load(folder["multi"]));
        Assert.Contains("sigma050, sigma100, slow, every3", intoSingle.Message);
        Assert.Contains("'ema.sigma050.'", intoSingle.Message);
        single.Save(folder["single"]);

        // The last profile's schedule differs: nothing may be written, the first profiles included.
        var changed = FourProfiles();
        changed[3] = changed[3] with { Schedule = EmaSchedule.Constant(0.5) };
        using var other = new EmaManager<BareParameters>(model, new EmaOptions { Profiles = changed });
        var before = other.Profiles.Select(p => p["alpha"].data<float>().ToArray()).ToList();
        var schedule = Assert.Throws<ArgumentException>(() => other.Load(folder["multi"]));
        Assert.Contains("'every3'", schedule.Message);
        Assert.Equal(before, other.Profiles.Select(p => p["alpha"].data<float>().ToArray()).ToList());
        Assert.Equal(0, other.Step);

        var fromSingle = Assert.Throws<ArgumentException>(() => other.Load(folder["single"]));
        Assert.Contains("single-profile", fromSingle.Message);

        using var fewer = new EmaManager<BareParameters>(model, new EmaOptions { Profiles = FourProfiles()[..2] });
        var strict = Assert.Throws<ArgumentException>(() => fewer.Load(folder["multi"]));
        Assert.Contains("do not match", strict.Message);
        fewer.Load(folder["multi"], strict: false);
        Assert.Equal(saved.Profile("sigma100")["beta"].data<float>().ToArray(), fewer.Profile("sigma100")["beta"].data<float>().ToArray());
        Assert.Equal(1, fewer.Step);
    }

    private static void Step(BareParameters model, EmaManager<BareParameters> ema, float[] alpha)
    {
        using (torch.no_grad())
        {
            using var values = torch.tensor(alpha);
            model.named_parameters().First(p => p.name == "alpha").parameter.copy_(values);
        }
        ema.Update(model);
    }

    private static void CopyWeights(torch.nn.Module from, torch.nn.Module to)
    {
        using var _ = torch.no_grad();
        var source = from.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var (name, p) in to.named_parameters()) p.copy_(source[name]);
    }

    private static Dictionary<string, float[]> Weights(torch.nn.Module model) =>
        model.named_parameters().ToDictionary(p => p.name, p => p.parameter.data<float>().ToArray());
}

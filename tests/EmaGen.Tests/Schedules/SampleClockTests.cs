using System;
using System.Collections.Generic;
using System.Linq;
using EmaGen.Dcp;
using EmaGen.Tests.Models;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;

namespace EmaGen.Tests.Schedules;

/// <summary>The samples clock, <c>Update(model, samples)</c>: EDM2's and EDM's time in images, resume, snapshots, and the two clocks kept apart.</summary>
public sealed class SampleClockTests
{
    // A curriculum with gradient accumulation: the batch changes from step to step.
    private static readonly long[] Batches = [64, 64, 128, 32, 256, 96, 7, 500, 128, 128, 33, 64];

    // EDM2's std_to_exp: the largest real root of [1, 7, 16 − σ⁻², 12 − σ⁻²] (np.roots there), by Newton from above.
    private static double StdToExp(double std)
    {
        double t = 1 / (std * std), g = t;
        for (int i = 0; i < 200; i++) g -= (((g + 7) * g + 16 - t) * g + 12 - t) / ((3 * g + 14) * g + 16 - t);
        return g;
    }

    private static double[] Values(torch.Tensor t) => t.to_type(torch.ScalarType.Float64).data<double>().ToArray();

    [Fact]
    public void Edm2PowerFunctionWithAVaryingBatchMatchesAFloat64Reference()
    {
        torch.manual_seed(11);
        using var model = new SizedModel(torch.ScalarType.Float64, 5, 17);
        using var ema = new EmaManager<SizedModel>(model, new EmaOptions { Schedule = EmaSchedule.PowerFunction(0.10) });
        using var byStep = new EmaManager<SizedModel>(model, new EmaOptions { Schedule = EmaSchedule.PowerFunction(0.10) });
        double gamma = StdToExp(0.10);
        var reference = new Dictionary<string, double[]>();
        long nimg = 0;
        foreach (var batch in Batches)
        {
            Runtime.UpdateNumericsTests.RandomizeParameters(model);
            nimg += batch;
            // EDM2's training loop: state.cur_nimg += batch_size; ema.update(cur_nimg, batch_size), which lerps each
            // parameter toward its EMA by power_function_beta(std, t_next=cur_nimg, t_delta=batch_size).
            double beta = Math.Pow(1 - (double)batch / nimg, gamma + 1);
            foreach (var (name, p) in model.named_parameters())
            {
                var net = Values(p);
                var old = reference.GetValueOrDefault(name) ?? net;
                reference[name] = net.Select((v, i) => v + (old[i] - v) * beta).ToArray();
            }
            ema.Update(model, samples: batch);
            byStep.Update(model);
            Assert.Equal(beta, ema.CurrentDecay, 1e-12);
        }
        Assert.Equal(Batches.Sum(), ema.SamplesSeen);
        Assert.Equal(Batches.Length, ema.Step);
        foreach (var (name, expected) in reference)
        {
            var actual = Values(ema[name]);
            for (int i = 0; i < expected.Length; i++) Assert.Equal(expected[i], actual[i], 1e-12);
        }
        // Counting updates instead gives another average with this curriculum.
        Assert.NotEqual(Values(byStep["leaves.1.w"]), Values(ema["leaves.1.w"]));
    }

    [Fact]
    public void EdmHalfLifeInImagesRampsUpOverTheImagesBeforeTheBatch()
    {
        using var model = new SizedModel(torch.ScalarType.Float32, 3);
        using var ema = new EmaManager<SizedModel>(model, new EmaOptions { Schedule = EmaScheduleParser.Parse("halflife:500,ramp=0.05") });
        long curNimg = 0;
        foreach (var batch in Batches)
        {
            ema.Update(model, batch);
            // EDM's training loop: the EMA update comes before cur_nimg += batch_size.
            double halfLife = Math.Min(500, curNimg * 0.05);
            Assert.Equal(Math.Pow(0.5, batch / Math.Max(halfLife, 1e-8)), ema.CurrentDecay, 15);
            curNimg += batch;
        }
    }

    [Fact]
    public void EveryKeepsCountingUpdatesAndSpansTheSamplesItSkipped()
    {
        using var model = new SizedModel(torch.ScalarType.Float32, 3);
        var options = new EmaOptions { Profiles = [new("each", EmaSchedule.PowerFunction(0.1)), new("every3", EmaSchedule.UpdateEvery(3, EmaSchedule.PowerFunction(0.1)))] };
        using var ema = new EmaManager<SizedModel>(model, options);
        double gamma = StdToExp(0.10);
        long nimg = 0, atLast = 0;
        for (int s = 0; s < Batches.Length; s++)
        {
            nimg += Batches[s];
            ema.Update(model, Batches[s]);
            Assert.Equal(Math.Pow(1 - (double)Batches[s] / nimg, gamma + 1), ema.Profile("each").CurrentDecay, 12);
            // The wrapper updates on calls 3, 6, 9, ... whatever the batches; the product of the skipped EDM2 decays telescopes.
            if ((s + 1) % 3 != 0) continue;
            Assert.Equal(Math.Pow(1 - (double)(nimg - atLast) / nimg, gamma + 1), ema.Profile("every3").CurrentDecay, 12);
            atLast = nimg;
        }
    }

    [Fact]
    public void SaveAndResumeOfTheClockIsBitEqual()
    {
        using var folder = TestPaths.NewTempFolder();
        torch.manual_seed(3);
        using var model = new SizedModel(torch.ScalarType.Float32, 9, 1000);
        var snapshots = Enumerable.Range(0, Batches.Length).Select(_ => { Runtime.UpdateNumericsTests.RandomizeParameters(model); return model.named_parameters().Select(p => p.parameter.clone()).ToArray(); }).ToList();
        EmaOptions Options() => new()
        {
            Profiles = [new("power", EmaSchedule.PowerFunction(0.05)), new("every3", EmaSchedule.UpdateEvery(3, EmaScheduleParser.Parse("halflife:300,ramp=0.1")))],
        };
        void Load(int s)
        {
            using var _ = torch.no_grad();
            foreach (var ((_, p), value) in model.named_parameters().Zip(snapshots[s])) p.copy_(value);
        }
        using var whole = new EmaManager<SizedModel>(model, Options());
        for (int s = 0; s < Batches.Length; s++)
        {
            Load(s);
            whole.Update(model, Batches[s]);
        }
        using (var first = new EmaManager<SizedModel>(model, Options()))
        {
            // Step 5: the every3 profile last updated at step 3, so its samples at update lag the clock.
            for (int s = 0; s < 5; s++)
            {
                Load(s);
                first.Update(model, Batches[s]);
            }
            first.Save(folder["ckpt"]);
        }
        var reader = DcpReader.Open(folder["ckpt"]);
        Assert.Equal(Batches.Take(5).Sum(), reader.ReadValue("ema.every3._emagen.samples"));
        Assert.Equal(Batches.Take(3).Sum(), reader.ReadValue("ema.every3._emagen.samples_at_update"));
        using var resumed = new EmaManager<SizedModel>(model, Options());
        resumed.Load(folder["ckpt"]);
        Assert.Equal(Batches.Take(5).Sum(), resumed.SamplesSeen);
        for (int s = 5; s < Batches.Length; s++)
        {
            Load(s);
            resumed.Update(model, Batches[s]);
        }
        Assert.Equal(whole.SamplesSeen, resumed.SamplesSeen);
        foreach (var profile in new[] { "power", "every3" })
        {
            Assert.Equal(whole.Profile(profile).CurrentDecay, resumed.Profile(profile).CurrentDecay);
            foreach (var name in whole.TrackedNames) Assert.Equal(whole.Profile(profile)[name].bytes.ToArray(), resumed.Profile(profile)[name].bytes.ToArray());
        }
        foreach (var list in snapshots) foreach (var t in list) t.Dispose();
    }

    [Fact]
    public void MixingStepAndSampleCallsIsAnError()
    {
        using var folder = TestPaths.NewTempFolder();
        using var model = new SizedModel(torch.ScalarType.Float32, 4);
        var options = new EmaOptions { Schedule = EmaSchedule.PowerFunction(0.1) };
        using (var bySteps = new EmaManager<SizedModel>(model, options))
        {
            bySteps.Update(model);
            var e = Assert.Throws<InvalidOperationException>(() => bySteps.Update(model, samples: 32));
            Assert.Contains("counts updates", e.Message);
            Assert.Equal(1, bySteps.Step);
            bySteps.Save(folder["steps"]);
        }
        using (var bySamples = new EmaManager<SizedModel>(model, options))
        {
            bySamples.Update(model, samples: 32);
            var e = Assert.Throws<InvalidOperationException>(() => bySamples.Update(model));
            Assert.Contains("counts samples", e.Message);
            Assert.Equal(1, bySamples.Step);
            // A checkpoint written on the step clock keeps the loader on it.
            bySamples.Load(folder["steps"]);
            Assert.Equal(0, bySamples.SamplesSeen);
            Assert.Throws<InvalidOperationException>(() => bySamples.Update(model, samples: 32));
            bySamples.Update(model);
        }
        using var warmup = new EmaManager<SizedModel>(model, new EmaOptions { Schedule = EmaSchedule.Warmup() });
        Assert.Contains("no time base in samples", Assert.Throws<NotSupportedException>(() => warmup.Update(model, 8)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => warmup.Update(model, 0));
        Assert.Equal(0, warmup.Step);
        warmup.Update(model);
    }

    [Fact]
    public void ShardedRanksTakeTheGlobalBatchAndSnapshotsRecordTheClock()
    {
        using var folder = TestPaths.NewTempFolder();
        torch.manual_seed(9);
        using var model = new SizedModel(torch.ScalarType.Float32, 6, 40);
        var options = new EmaOptions { Schedule = EmaSchedule.PowerFunction(0.1) };
        using var dense = new EmaManager<SizedModel>(model, options);
        using var rank0 = new ShardedEmaManager<SizedModel>(model, 0, 2, options);
        using var rank1 = new ShardedEmaManager<SizedModel>(model, 1, 2, options);
        foreach (var batch in Batches)
        {
            Runtime.UpdateNumericsTests.RandomizeParameters(model);
            dense.Update(model, batch);
            rank0.Update(model, batch);
            rank1.Update(model, batch);
        }
        foreach (var name in dense.TrackedNames)
        {
            var whole = Values(dense[name]);
            Assert.Equal(whole, Values(rank0[name]).Concat(Values(rank1[name])).ToArray());
        }
        Assert.Equal(dense.SamplesSeen, rank1.SamplesSeen);
        var snapshot = PostHocEma.SaveSnapshot(dense, folder["snapshots"]);
        Assert.Equal(Batches.Sum(), DcpReader.Open(snapshot).ReadValue("_emagen.samples"));
    }
}

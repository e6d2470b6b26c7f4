using System;
using System.Linq;
using EmaGen.Tests.Models;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace EmaGen.Tests.Schedules;

/// <summary>Switch EMA (SEMA): the model set to, or blended toward, the EMA every k steps or on call; dense only.</summary>
public sealed class SwitchEmaTests
{
    private static void Move(SizedModel model)
    {
        using var _ = no_grad();
        for (int i = 0; i < model.Count; i++)
        {
            using var noise = randn(model[i].shape).mul_(0.1).to_type(model[i].dtype);
            model[i].add_(noise);
        }
    }

    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.BFloat16)]
    public void EveryKStepsTheModelMovesTowardTheEmaByTheBlend(ScalarType dtype)
    {
        manual_seed(11);
        using var model = new SizedModel(dtype, 7, 33, 64);
        using var ema = new EmaManager<SizedModel>(model, new EmaOptions { Decay = 0.8, SwitchEvery = 4, SwitchBlend = 0.25 });
        for (int step = 1; step <= 8; step++)
        {
            Move(model);
            // What the switch must give, from the model and the EMA after this step's update, in float64.
            bool switches = step % 4 == 0;
            var before = Enumerable.Range(0, model.Count).Select(i => TensorValues.Doubles(model[i])).ToArray();
            ema.Update(model);
            for (int i = 0; i < model.Count; i++)
            {
                var e = TensorValues.Doubles(ema[ema.TrackedNames[i]]);
                var after = TensorValues.Doubles(model[i]);
                double tolerance = dtype == ScalarType.BFloat16 ? 1.0 / 128 : 1e-6;
                for (int j = 0; j < after.Length; j++)
                {
                    double expected = switches ? before[i][j] + 0.25 * (e[j] - before[i][j]) : before[i][j];
                    Assert.True(Math.Abs(after[j] - expected) <= tolerance * Math.Max(1, Math.Abs(expected)), $"step {step} [{i}][{j}]: {after[j]} vs {expected}");
                }
            }
            Assert.Equal(switches ? step : step < 4 ? 0 : 4, ema.LastSwitchStep);
        }
        // An explicit switch with blend 1 copies the EMA in.
        Move(model);
        ema.Update(model);
        ema.SwitchInto(model);
        Assert.Equal(9, ema.LastSwitchStep);
        for (int i = 0; i < model.Count; i++)
        {
            using var expected = ema[ema.TrackedNames[i]].to_type(dtype);
            Assert.Equal(TensorValues.Bits(expected), TensorValues.Bits(model[i]));
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => ema.SwitchInto(model, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => ema.SwitchInto(model, 1.5));
        Assert.Throws<ArgumentOutOfRangeException>(() => new EmaManager<SizedModel>(model, new EmaOptions { SwitchEvery = 0 }));
    }

    [Theory]
    [InlineData(ScalarType.Float32, 1.0)]
    [InlineData(ScalarType.BFloat16, 0.5)]
    public void ASwitchingUpdateAllocatesNothingAndTheReportSaysItSwitched(ScalarType dtype, double blend)
    {
        manual_seed(4);
        using var model = new SizedModel(dtype, 400_000, 700_001, 65);
        using var ema = new EmaManager<SizedModel>(model, new EmaOptions { Decay = 0.9, SwitchEvery = 2, SwitchBlend = blend, Threads = 2 });
        Assert.Equal(2, ema.UpdateThreads);
        // Every other update switches; measured over warmed-up pairs of a switching and a plain update.
        long allocated = Allocations.OfSteadyState(() =>
        {
            ema.Update(model);
            ema.Update(model);
        }, warmup: 3, measured: 4);
        Assert.Equal(0, allocated);
        Assert.Equal(ema.Step, ema.LastSwitchStep);
        Assert.True(ema.LastUpdate.Switched);
        Assert.Contains("switched", ema.LastUpdate.ToString());
        Move(model);
        ema.Update(model);
        Assert.False(ema.LastUpdate.Switched);
        // An explicit switch after the update is told too, until the next update.
        Assert.Equal(0, Allocations.OfSteadyState(() => ema.SwitchInto(model, blend), warmup: 1, measured: 3));
        Assert.True(ema.LastUpdate.Switched);
    }

    [Fact]
    public void TheShardedManagerRefusesSwitchEmaSayingWhy()
    {
        using var model = new SizedModel(ScalarType.Float32, 8);
        var e = Assert.Throws<NotSupportedException>(() => new ShardedEmaManager<SizedModel>(model, 0, 2, new EmaOptions { SwitchEvery = 10 }));
        Assert.Contains("holds only its boxes", e.Message);
        Assert.Contains("gather", e.Message);
    }
}

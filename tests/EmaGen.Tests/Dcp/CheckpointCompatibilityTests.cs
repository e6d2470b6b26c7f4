using System;
using System.Linq;
using EmaGen.Tests.Models;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;

namespace EmaGen.Tests.Dcp;

/// <summary>
/// Checkpoints written by an earlier EmaGen keep loading. Fixtures/emagen-ema-1-before-current-decay was written by
/// <see cref="CheckpointFixtureRuns.WriteAll"/> at commit ddef73c, before <c>_emagen.current_decay</c> was stored
/// (a named profile's <c>_emagen.decay</c> then held its current decay). Today's code runs the same training again: the
/// loaded shadows must be those bits, the step restored, and the decay left unknown where the file does not say it.
/// </summary>
[Collection(ProcessWideState.Name)]
public sealed class CheckpointCompatibilityTests
{
    private static string Fixture(string name) => TestPaths.Fixture(System.IO.Path.Combine("emagen-ema-1-before-current-decay", name));

    [Fact]
    public void ASingleProfileCheckpointFromBeforeCurrentDecayLoadsBitForBit()
    {
        using var trained = CheckpointFixtureRuns.Model(61);
        using var expected = CheckpointFixtureRuns.Single(trained);
        using var model = CheckpointFixtureRuns.Model(61);
        using var loaded = new EmaManager<SizedModel>(model, new EmaOptions { Decay = 0.95, Schedule = EmaSchedule.PowerFunction(0.10) });
        loaded.Load(Fixture("single"));
        Assert.Equal(4, loaded.Step);
        Assert.True(double.IsNaN(loaded.CurrentDecay), "an old checkpoint does not say which decay was applied last");
        foreach (var name in expected.TrackedNames) Assert.Equal(expected[name].bytes.ToArray(), loaded[name].bytes.ToArray());

        // Resumed from it, the next update is today's update of those shadows.
        loaded.Update(model);
        Assert.Equal(5, loaded.Step);
        Assert.Equal(EmaSchedule.PowerFunction(0.10).DecayAt(5), loaded.CurrentDecay);
    }

    [Fact]
    public void ANamedProfileCheckpointFromBeforeCurrentDecayLoadsBitForBit()
    {
        using var trained = CheckpointFixtureRuns.Model(62);
        using var expected = CheckpointFixtureRuns.Named(trained);
        using var model = CheckpointFixtureRuns.Model(62);
        using var loaded = new EmaManager<SizedModel>(model, new EmaOptions { Decay = 0.95, Profiles = CheckpointFixtureRuns.Profiles() });
        loaded.Load(Fixture("named"));
        Assert.Equal(5, loaded.Step);
        for (int k = 0; k < expected.Profiles.Count; k++)
        {
            Assert.True(double.IsNaN(loaded.Profiles[k].CurrentDecay));
            foreach (var name in expected.TrackedNames)
            {
                Assert.Equal(expected.Profiles[k][name].bytes.ToArray(), loaded.Profiles[k][name].bytes.ToArray());
            }
        }
    }

    [Fact]
    public void AShardedCheckpointFromBeforeCurrentDecayLoadsIntoBothManagers()
    {
        using var trained = CheckpointFixtureRuns.Model(63);
        var expected = CheckpointFixtureRuns.Sharded(trained);
        try
        {
            using var model = CheckpointFixtureRuns.Model(63);
            for (int r = 0; r < 2; r++)
            {
                using var rank = new ShardedEmaManager<SizedModel>(model, r, 2, new EmaOptions { Decay = 0.95, Profiles = CheckpointFixtureRuns.Profiles() });
                rank.Load(Fixture("sharded"));
                Assert.Equal(3, rank.Step);
                for (int k = 0; k < 3; k++)
                {
                    for (int i = 0; i < model.Count; i++)
                    {
                        var name = $"leaves.{i}.w";
                        Assert.Equal(expected[r].Profiles[k][name].bytes.ToArray(), rank.Profiles[k][name].bytes.ToArray());
                    }
                }
            }

            // The same folder loads into a dense manager: each shard lands in its box.
            using var dense = new EmaManager<SizedModel>(model, new EmaOptions { Decay = 0.95, Profiles = CheckpointFixtureRuns.Profiles() });
            dense.Load(Fixture("sharded"));
            Assert.Equal(3, dense.Step);
            var full = dense.Profiles[1]["leaves.3.w"];
            var firstHalf = expected[0].Profiles[1]["leaves.3.w"];
            Assert.Equal(firstHalf.bytes.ToArray(), full.narrow(0, 0, firstHalf.shape[0]).contiguous().bytes.ToArray());
        }
        finally
        {
            foreach (var rank in expected) rank.Dispose();
        }
    }
}

using System;
using System.Linq;
using EmaGen.Dcp;
using EmaGen.Tests.Models;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;

namespace EmaGen.Tests.Dcp;

/// <summary>
/// Checkpoints written by an earlier EmaGen keep loading. Fixtures/emagen-ema-1-before-current-decay was written by
/// <see cref="CheckpointFixtureRuns.WriteAll"/> at commit ddef73c, before <c>_emagen.current_decay</c> was stored
/// (a named profile's <c>_emagen.decay</c> then held its current decay), and before the update's exact blend: its
/// values are what they are. The loaded shadows must be the stored bits (read raw from the folder), the step restored,
/// the decay left unknown where the file does not say it, and the next update today's.
/// </summary>
[Collection(ProcessWideState.Name)]
public sealed class CheckpointCompatibilityTests
{
    private static string Fixture(string name) => TestPaths.Fixture(System.IO.Path.Combine("emagen-ema-1-before-current-decay", name));

    private static readonly string[] ProfileNames = CheckpointFixtureRuns.Profiles().Select(p => p.Name).ToArray();

    // The bits a key's box holds in the folder, read by the DCP reader alone.
    private static byte[] Stored(string folder, string key, long[]? offsets = null, long[]? sizes = null)
    {
        var reader = DcpReader.Open(Fixture(folder));
        using var t = offsets is null ? reader.ReadTensor(key) : reader.ReadSlice(key, offsets, sizes!);
        return t.bytes.ToArray();
    }

    [Fact]
    public void ASingleProfileCheckpointFromBeforeCurrentDecayLoadsBitForBit()
    {
        using var model = CheckpointFixtureRuns.Model(61);
        using var loaded = new EmaManager<SizedModel>(model, new EmaOptions { Decay = 0.95, Schedule = EmaSchedule.PowerFunction(0.10) });
        loaded.Load(Fixture("single"));
        Assert.Equal(4, loaded.Step);
        Assert.True(double.IsNaN(loaded.CurrentDecay), "an old checkpoint does not say which decay was applied last");
        foreach (var name in loaded.TrackedNames) Assert.Equal(Stored("single", "ema." + name), loaded[name].bytes.ToArray());

        // Resumed from it, the next update is today's update of those shadows.
        var before = loaded.StateDict();
        loaded.Update(model);
        Assert.Equal(5, loaded.Step);
        Assert.Equal(EmaSchedule.PowerFunction(0.10).DecayAt(5), loaded.CurrentDecay);
        var p = model[0].data<float>().ToArray();
        Assert.Equal(before["leaves.0.w"].data<float>().ToArray().Zip(p, (e, x) => Lerp.Of(e, x, loaded.CurrentDecay)), loaded["leaves.0.w"].data<float>().ToArray());
    }

    [Fact]
    public void ANamedProfileCheckpointFromBeforeCurrentDecayLoadsBitForBit()
    {
        using var model = CheckpointFixtureRuns.Model(62);
        using var loaded = new EmaManager<SizedModel>(model, new EmaOptions { Decay = 0.95, Profiles = CheckpointFixtureRuns.Profiles() });
        loaded.Load(Fixture("named"));
        Assert.Equal(5, loaded.Step);
        for (int k = 0; k < loaded.Profiles.Count; k++)
        {
            Assert.True(double.IsNaN(loaded.Profiles[k].CurrentDecay));
            foreach (var name in loaded.TrackedNames)
            {
                Assert.Equal(Stored("named", $"ema.{ProfileNames[k]}.{name}"), loaded.Profiles[k][name].bytes.ToArray());
            }
        }
    }

    [Fact]
    public void AShardedCheckpointFromBeforeCurrentDecayLoadsIntoBothManagers()
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
                    var (offset, size) = ShardLayout.Chunk(model[i].shape[0], 2, r);
                    Assert.Equal(Stored("sharded", $"ema.{ProfileNames[k]}.{name}", [offset], [size]), rank.Profiles[k][name].bytes.ToArray());
                }
            }
        }

        // The same folder loads into a dense manager: each shard lands in its box, the whole tensor is the stored one.
        using var dense = new EmaManager<SizedModel>(model, new EmaOptions { Decay = 0.95, Profiles = CheckpointFixtureRuns.Profiles() });
        dense.Load(Fixture("sharded"));
        Assert.Equal(3, dense.Step);
        Assert.Equal(Stored("sharded", "ema.power.leaves.3.w"), dense.Profiles[1]["leaves.3.w"].bytes.ToArray());
    }

    [Fact]
    public void ATiedCheckpointWithBothKeysLoadsIntoOneShadowAndSaysWhichKeyItDropped()
    {
        // Fixtures/emagen-ema-1-tied-both-keys was written by CheckpointFixtureRuns.WriteTied at commit 77f01c7, when a
        // tied tensor had a shadow per name: it holds ema.wte.weight and ema.lm_head.weight, equal.
        string folder = TestPaths.Fixture(System.IO.Path.Combine("emagen-ema-1-tied-both-keys", "tied"));
        var reader = DcpReader.Open(folder);
        byte[] Stored(string key, long[]? offsets = null, long[]? sizes = null)
        {
            using var t = offsets is null ? reader.ReadTensor(key) : reader.ReadSlice(key, offsets, sizes!);
            return t.bytes.ToArray();
        }
        var stored = Stored("ema.wte.weight");
        Assert.Equal(stored, Stored("ema.lm_head.weight"));
        foreach (bool pack in new[] { true, false })
        {
            using var model = CheckpointFixtureRuns.TiedModel(64);
            using var dense = new EmaManager<TiedGptModel>(model, new EmaOptions { Decay = 0.9, PackParameters = pack });
            dense.Load(folder);
            Assert.Equal(["ema.lm_head.weight"], dense.LastLoadDroppedKeys);
            Assert.Equal(3, dense.Step);
            Assert.Equal(stored, dense["wte.weight"].bytes.ToArray());
            foreach (var name in dense.TrackedNames) Assert.Equal(Stored("ema." + name), dense[name].bytes.ToArray());
        }
        using var shardedModel = CheckpointFixtureRuns.TiedModel(64);
        for (int r = 0; r < 2; r++)
        {
            using var rank = new ShardedEmaManager<TiedGptModel>(shardedModel, r, 2, new EmaOptions { Decay = 0.9 });
            rank.Load(folder);
            Assert.Equal(["ema.lm_head.weight"], rank.LastLoadDroppedKeys);
            var (offset, size) = ShardLayout.Chunk(TiedGptModel.Vocabulary, 2, r);
            Assert.Equal(Stored("ema.wte.weight", [offset, 0], [size, TiedGptModel.Width]), rank["wte.weight"].bytes.ToArray());
        }
    }
}

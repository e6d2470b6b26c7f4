using System;
using System.Collections.Generic;
using System.Linq;
using System.Threading.Tasks;
using EmaGen.Tests.Models;
using EmaGen.Tests.Runtime;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;

namespace EmaGen.Tests.Sharding;

/// <summary>A sharded EMA equals the dense one, box by box, through save and any-world-size load, at 1/N of the memory.</summary>
public sealed class ShardedEmaManagerTests
{
    private static readonly long[] Sizes = { 5, 7, 1, 64, 3 };

    [Theory]
    [InlineData(2, new[] { 1, 3 })]
    [InlineData(3, new[] { 1, 2 })]
    [InlineData(4, new[] { 1, 2, 3 })]
    public async Task ShardsEqualTheDenseEmaThroughSaveAndReshardedLoad(int world, int[] loadWorlds)
    {
        using var folder = TestPaths.NewTempFolder();
        torch.manual_seed(31);
        using var model = new SizedModel(torch.ScalarType.Float32, Sizes);
        var schedule = EmaSchedule.Warmup(maxDecay: 0.9);
        using var dense = new EmaManager<SizedModel>(model, new EmaOptions { Schedule = schedule });
        var ranks = Enumerable.Range(0, world).Select(r => new ShardedEmaManager<SizedModel>(model, r, world, new EmaOptions { Schedule = schedule })).ToList();
        try
        {
            for (int step = 0; step < 5; step++)
            {
                UpdateNumericsTests.RandomizeParameters(model);
                dense.Update(model);
                foreach (var rank in ranks) rank.Update(model);
            }
            foreach (var rank in ranks) AssertMatchesDense(rank, dense);

            await Task.WhenAll(ranks.Select(rank => Task.Run(() => rank.Save(folder["ckpt"], "s1", TimeSpan.FromSeconds(30)))));

            foreach (int m in loadWorlds)
            {
                for (int r = 0; r < m; r++)
                {
                    using var fresh = new SizedModel(torch.ScalarType.Float32, Sizes);
                    using var loaded = new ShardedEmaManager<SizedModel>(fresh, r, m, new EmaOptions { Schedule = schedule });
                    loaded.Load(folder["ckpt"]);
                    Assert.Equal(5, loaded.Step);
                    AssertMatchesDense(loaded, dense);
                }
            }

            // The dense manager reads the sharded folder too (strict names, its own whole tensors).
            using var other = new SizedModel(torch.ScalarType.Float32, Sizes);
            using var consolidated = new EmaManager<SizedModel>(other, new EmaOptions { Schedule = schedule });
            consolidated.Load(folder["ckpt"]);
            foreach (var name in dense.TrackedNames) Assert.Equal(dense[name].data<float>().ToArray(), consolidated[name].data<float>().ToArray());
        }
        finally
        {
            foreach (var rank in ranks) rank.Dispose();
        }
    }

    [Fact]
    public void FsdpStyleModelsHoldingOnlyTheirShardGiveTheSameEma()
    {
        const int world = 3;
        torch.manual_seed(41);
        using var full = new SizedModel(torch.ScalarType.Float32, Sizes);
        using var dense = new EmaManager<SizedModel>(full, 0.8);
        var globalShapes = Enumerable.Range(0, Sizes.Length).ToDictionary(i => $"leaves.{i}.w", i => new[] { Sizes[i] });
        var locals = new List<SizedModel>();
        var ranks = new List<ShardedEmaManager<SizedModel>>();
        try
        {
            for (int r = 0; r < world; r++)
            {
                var boxes = Sizes.Select(d => ShardLayout.Chunk(d, world, r)).ToList();
                var local = new SizedModel(torch.ScalarType.Float32, boxes.Select(b => b.Size).ToArray());
                CopyShards(full, local, boxes);
                locals.Add(local);
                ranks.Add(new ShardedEmaManager<SizedModel>(local, r, world, new EmaOptions { Decay = 0.8 }, globalShapes));
            }
            for (int step = 0; step < 4; step++)
            {
                UpdateNumericsTests.RandomizeParameters(full);
                dense.Update(full);
                for (int r = 0; r < world; r++)
                {
                    CopyShards(full, locals[r], Sizes.Select(d => ShardLayout.Chunk(d, world, r)).ToList());
                    ranks[r].Update(locals[r]);
                }
            }
            foreach (var rank in ranks) AssertMatchesDense(rank, dense);

            // StateDict round trip, and a state for another rank is refused by name.
            var state = ranks[1].StateDict();
            UpdateNumericsTests.RandomizeParameters(locals[1]);
            ranks[1].Update(locals[1]);
            ranks[1].LoadStateDict(state);
            AssertMatchesDense(ranks[1], dense);
            var e = Assert.Throws<ArgumentException>(() => ranks[0].LoadStateDict(state));
            Assert.Contains("does not fit rank 0", e.Message);

            using var wrong = new SizedModel(torch.ScalarType.Float32, Sizes);
            var shape = Assert.Throws<ArgumentException>(() => new ShardedEmaManager<SizedModel>(wrong, 0, world, null, globalShapes));
            Assert.Contains("owns", shape.Message);
        }
        finally
        {
            foreach (var r in ranks) r.Dispose();
            foreach (var m in locals) m.Dispose();
        }
    }

    private static void CopyShards(SizedModel full, SizedModel local, List<(long Offset, long Size)> boxes)
    {
        using var _ = torch.no_grad();
        for (int i = 0; i < boxes.Count; i++)
        {
            using var slice = full[i].narrow(0, boxes[i].Offset, boxes[i].Size);
            local[i].copy_(slice);
        }
    }

    [Fact]
    public void EachOfFourRanksHoldsAQuarterOfTheDenseEma()
    {
        using var model = new SizedModel(torch.ScalarType.Float32, 4096, 1000, 17, 3);
        using var dense = new EmaManager<SizedModel>(model);
        long denseElements = dense.Parameters.Sum(p => p.Numel);
        for (int r = 0; r < 4; r++)
        {
            using var rank = new ShardedEmaManager<SizedModel>(model, r, 4);
            // At most one extra row per tensor from rounding up (torch.chunk gives the first ranks ceil(D/N) rows), and the
            // shadow arena's 64-byte alignment per tensor (counted alike by both managers).
            Assert.True(rank.ShadowBytes <= denseElements * 4 / 4 + rank.Count * (4 + 64), $"rank {r}: {rank.ShadowBytes} bytes");
        }
    }

    [Fact]
    public void ParametersTheShardMapCannotSplitAreNamed()
    {
        using var model = new ShardMapModel();
        var e = Assert.Throws<InvalidOperationException>(() => new ShardedEmaManager<ShardMapModel>(model, 0, 2));
        Assert.Contains("'byColumns.bias'", e.Message);
    }

    [Theory]
    [InlineData(torch.ScalarType.Float32)]
    [InlineData(torch.ScalarType.BFloat16)]
    public async Task ShardedProfilesEqualTheDenseProfilesAndShareItsCheckpointLayout(torch.ScalarType dtype)
    {
        using var folder = TestPaths.NewTempFolder();
        torch.manual_seed(32);
        using var model = new SizedModel(dtype, Sizes);
        EmaProfileOptions[] profiles =
        [
            new("narrow", EmaSchedule.PowerFunction(0.05)),
            new("wide", EmaSchedule.PowerFunction(0.10)),
            new("every2", EmaSchedule.UpdateEvery(2, EmaSchedule.Constant(0.8))),
        ];
        using var dense = new EmaManager<SizedModel>(model, new EmaOptions { Profiles = profiles });
        const int world = 3;
        var ranks = Enumerable.Range(0, world).Select(r => new ShardedEmaManager<SizedModel>(model, r, world, new EmaOptions { Profiles = profiles })).ToList();
        try
        {
            for (int step = 0; step < 5; step++)
            {
                UpdateNumericsTests.RandomizeParameters(model);
                dense.Update(model);
                foreach (var rank in ranks) rank.Update(model);
            }
            Assert.Equal(["narrow", "wide", "every2"], ranks[0].Profiles.Select(p => p.Name));
            Assert.Same(ranks[0].Profiles[1], ranks[0].Profile("wide"));
            Assert.Throws<KeyNotFoundException>(() => ranks[0].Profile("medium"));
            for (int k = 0; k < profiles.Length; k++)
            {
                Assert.Equal(dense.Profiles[k].CurrentDecay, ranks[1].Profiles[k].CurrentDecay);
                Assert.Equal(dense.Profiles[k].ToString(), ranks[1].Profiles[k].ToString());
                foreach (var rank in ranks) AssertMatchesDense(rank, dense, k);
            }
            // Code written against EmaProfileBase reads either manager's profiles: whole tensors or this rank's shards.
            static long Elements(EmaProfileBase profile, string name) => profile[name].numel();
            long whole = Elements(dense.Profiles[2], "leaves.0.w");
            Assert.Equal(whole, ranks.Sum(rank => Elements(rank.Profiles[2], "leaves.0.w")));

            await Task.WhenAll(ranks.Select(rank => Task.Run(() => rank.Save(folder["ckpt"], "p1", TimeSpan.FromSeconds(30)))));
            using var other = new SizedModel(dtype, Sizes);
            using var consolidated = new EmaManager<SizedModel>(other, new EmaOptions { Profiles = profiles });
            consolidated.Load(folder["ckpt"]);
            Assert.Equal(5, consolidated.Step);
            for (int k = 0; k < profiles.Length; k++)
            {
                foreach (var name in dense.TrackedNames)
                {
                    Assert.Equal(dense.Profiles[k][name].data<float>().ToArray(), consolidated.Profiles[k][name].data<float>().ToArray());
                }
            }

            dense.Save(folder["dense"]);
            using var resharded = new ShardedEmaManager<SizedModel>(other, 1, 2, new EmaOptions { Profiles = profiles });
            resharded.Load(folder["dense"]);
            for (int k = 0; k < profiles.Length; k++) AssertMatchesDense(resharded, dense, k);

            using var single = new ShardedEmaManager<SizedModel>(other, 0, 2, new EmaOptions { Schedule = EmaSchedule.PowerFunction(0.05) });
            var mismatch = Assert.Throws<ArgumentException>(() => single.Load(folder["ckpt"]));
            Assert.Contains("narrow, wide, every2", mismatch.Message);
        }
        finally
        {
            foreach (var rank in ranks) rank.Dispose();
        }
    }

    [Fact]
    public void LargeShardsAreSplitAcrossThreadsWithTheSameResult()
    {
        torch.manual_seed(34);
        using var model = new SizedModel(torch.ScalarType.Float32, 3, (1 << 21) + 5, 70_001);
        EmaProfileOptions[] profiles = [new("a", EmaSchedule.PowerFunction(0.05)), new("b", EmaSchedule.Constant(0.99))];
        using var dense = new EmaManager<SizedModel>(model, new EmaOptions { Profiles = profiles, Threads = 1 });
        using var rank = new ShardedEmaManager<SizedModel>(model, 1, 2, new EmaOptions { Profiles = profiles, Threads = 2 });
        Assert.Equal(2, rank.UpdateThreads);
        for (int step = 0; step < 4; step++)
        {
            UpdateNumericsTests.RandomizeParameters(model);
            dense.Update(model);
            rank.Update(model);
        }
        for (int k = 0; k < profiles.Length; k++) AssertMatchesDense(rank, dense, k);
    }

    [Fact]
    public async Task TrackedBuffersAreReplicatedOnEveryRankAndMatchTheDenseEma()
    {
        using var folder = TestPaths.NewTempFolder();
        torch.manual_seed(35);
        using var model = new NormModel();
        var options = new EmaOptions { Decay = 0.7, TrackBuffers = true };
        using var dense = new EmaManager<NormModel>(model, options);
        var ranks = Enumerable.Range(0, 2).Select(r => new ShardedEmaManager<NormModel>(model, r, 2, options)).ToList();
        try
        {
            for (int step = 0; step < 4; step++)
            {
                model.train();
                using (torch.no_grad()) model.call(torch.randn(8, 4)).Dispose();
                UpdateNumericsTests.RandomizeParameters(model);
                dense.Update(model);
                foreach (var rank in ranks) rank.Update(model);
            }
            Assert.Equal(dense.Count, ranks[0].Count);
            foreach (var rank in ranks)
            {
                foreach (var name in new[] { "bn.running_mean", "bn.running_var", "bn.num_batches_tracked", "scale" })
                {
                    Assert.True(dense[name].bytes.SequenceEqual(rank[name].bytes), $"rank {rank.Rank}: {name}");
                }
            }
            Assert.Equal(4L, ranks[1]["bn.num_batches_tracked"].item<long>());

            await Task.WhenAll(ranks.Select(rank => Task.Run(() => rank.Save(folder["ckpt"], "b1", TimeSpan.FromSeconds(30)))));
            using var other = new NormModel();
            using var consolidated = new EmaManager<NormModel>(other, options);
            consolidated.Load(folder["ckpt"]);
            foreach (var name in dense.TrackedNames) Assert.True(dense[name].bytes.SequenceEqual(consolidated[name].bytes), name);
        }
        finally
        {
            foreach (var rank in ranks) rank.Dispose();
        }
    }

    [Fact]
    public async Task SaveAsyncOfAllRanksHoldsTheStateAtTheCall()
    {
        using var folder = TestPaths.NewTempFolder();
        torch.manual_seed(36);
        using var model = new SizedModel(torch.ScalarType.Float32, Sizes);
        EmaProfileOptions[] profiles = [new("narrow", EmaSchedule.PowerFunction(0.05)), new("wide", EmaSchedule.PowerFunction(0.10))];
        using var dense = new EmaManager<SizedModel>(model, new EmaOptions { Profiles = profiles });
        var ranks = Enumerable.Range(0, 3).Select(r => new ShardedEmaManager<SizedModel>(model, r, 3, new EmaOptions { Profiles = profiles })).ToList();
        try
        {
            for (int round = 1; round <= 2; round++)
            {
                for (int step = 0; step < 3; step++)
                {
                    UpdateNumericsTests.RandomizeParameters(model);
                    dense.Update(model);
                    foreach (var rank in ranks) rank.Update(model);
                }
                var atCall = dense.Profiles.Select(p => p.StateDict()).ToList();
                var saves = ranks.Select(rank => rank.SaveAsync(folder[$"ckpt{round}"], $"a{round}", TimeSpan.FromSeconds(30))).ToList();
                UpdateNumericsTests.RandomizeParameters(model);
                foreach (var rank in ranks) rank.Update(model);
                dense.Update(model);
                await Task.WhenAll(saves);

                using var other = new SizedModel(torch.ScalarType.Float32, Sizes);
                using var loaded = new EmaManager<SizedModel>(other, new EmaOptions { Profiles = profiles });
                loaded.Load(folder[$"ckpt{round}"]);
                Assert.Equal(round * 4 - 1, loaded.Step);
                for (int k = 0; k < 2; k++)
                {
                    foreach (var (name, t) in atCall[k]) Assert.Equal(t.data<float>().ToArray(), loaded.Profiles[k][name].data<float>().ToArray());
                }
            }
        }
        finally
        {
            foreach (var rank in ranks) rank.Dispose();
        }
    }

    [Fact]
    public void SteadyStateShardedUpdatesAllocateNothing()
    {
        torch.manual_seed(33);
        using var model = new SizedModel(torch.ScalarType.Float32, 5, 7, 1, 64, 3000);
        using var single = new ShardedEmaManager<SizedModel>(model, 1, 3, new EmaOptions { Decay = 0.9 });
        using var fused = new ShardedEmaManager<SizedModel>(model, 2, 3, new EmaOptions
        {
            Profiles = [new("a", EmaSchedule.PowerFunction(0.05)), new("b", EmaSchedule.Constant(0.99)), new("c", EmaSchedule.UpdateEvery(2, EmaSchedule.Constant(0.9)))],
        });
        for (int i = 0; i < 5; i++)
        {
            single.Update(model);
            fused.Update(model);
        }
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 10; i++)
        {
            single.Update(model);
            fused.Update(model);
        }
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.True(allocated == 0, $"{allocated} bytes allocated over 20 sharded updates");

        using var other = new SizedModel(torch.ScalarType.Float32, 5, 7, 1, 64);
        var changed = Assert.Throws<InvalidOperationException>(() => single.Update(other));
        Assert.Contains("slots", changed.Message);
    }

    [Fact]
    public void TheTypedShadowOfARankIsItsShards()
    {
        torch.manual_seed(36);
        using var model = new NormModel();
        using var rank = new ShardedEmaManager<NormModel>(model, 1, 2, new EmaOptions
        {
            Profiles = [new("fast", EmaSchedule.Constant(0.9)), new("slow", EmaSchedule.Constant(0.99))],
        });
        rank.Update(model);
        // The generated Shadow property reads the same tensors as the name indexer: this rank's boxes.
        Assert.Same(rank["fc.weight"], rank.Shadow.fc.weight);
        Assert.Same(rank.Profiles[1]["fc.bias"], rank.Profiles[1].Shadow.fc.bias);
        Assert.Same(rank.Profile("slow")["bn.weight"], rank.Profile("slow").Shadow.bn.weight);
        Assert.Equal(new long[] { 2, 4 }, rank.Shadow.fc.weight.shape);
        Assert.NotSame(rank.Profiles[0].Shadow.fc.weight, rank.Profiles[1].Shadow.fc.weight);
        var buffer = Assert.Throws<InvalidOperationException>(() => rank.Shadow.bn.running_mean);
        Assert.Contains("TrackBuffers", buffer.Message);
    }

    [Fact]
    public void AParameterRePointedInPlaceIsCheckedAgainstTheLayoutBeforeAnythingIsWritten()
    {
        // The sharded manager shares the dense engine's per-step check (LiveSlots): a parameter whose data pointer
        // changes is re-checked, so a set_() to another size throws, naming it, before any shard is written (the
        // sharded manager used to compare element counts only, per tensor and step, through a LibTorch call).
        torch.manual_seed(35);
        using var model = new SizedModel(torch.ScalarType.Float32, 12, 20, 8);
        using var rank = new ShardedEmaManager<SizedModel>(model, 0, 2, new EmaOptions { Decay = 0.5 });
        rank.Update(model);
        var before = rank[$"leaves.1.w"].clone();
        using (torch.no_grad()) model[1].set_(torch.ones(21));
        var size = Assert.Throws<InvalidOperationException>(() => rank.Update(model));
        Assert.Contains("'leaves.1.w' has 21 elements", size.Message);
        Assert.Equal(1, rank.Step);
        Assert.True(before.bytes.SequenceEqual(rank["leaves.1.w"].bytes), "a failed update wrote the shard");

        // Re-pointed to a same-shaped fp32 tensor, it is followed: the shard moves toward the new values.
        using (torch.no_grad()) model[1].set_(torch.full(20, 3f));
        rank.Update(model);
        var expected = before * 0.5 + 3f * 0.5;
        Assert.True(expected.allclose(rank["leaves.1.w"]), "the re-pointed parameter's shard was not updated from its new data");
    }

    private static void AssertMatchesDense(ShardedEmaManager<SizedModel> rank, EmaManager<SizedModel> dense, int profile = 0)
    {
        foreach (var name in dense.TrackedNames)
        {
            var full = dense.Profiles[profile][name];
            var (offsets, sizes) = ShardLayout.Box(full.shape, 0, rank.WorldSize, rank.Rank);
            using var box = full.narrow(0, offsets[0], sizes[0]);
            var expected = box.numel() == 0 ? Array.Empty<float>() : box.contiguous().data<float>().ToArray();
            var shard = rank.Profiles[profile][name];
            var actual = shard.numel() == 0 ? Array.Empty<float>() : shard.data<float>().ToArray();
            Assert.Equal(expected, actual);
        }
    }
}

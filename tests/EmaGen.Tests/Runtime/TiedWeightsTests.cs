using System;
using System.Collections.Generic;
using System.Linq;
using System.Threading.Tasks;
using EmaGen.Dcp;
using EmaGen.Tests.Models;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace EmaGen.Tests.Runtime;

/// <summary>
/// Tied weights (issue 30): a tensor the model reaches under several names has one shadow, named by its first name in
/// <c>named_parameters()</c>; the other names are aliases of it. For both managers, packed and not: the keys are the
/// model's trainable <c>named_parameters()</c>, the shadow memory is one copy, each step blends the tensor once, and
/// checkpoints hold it once (with its aliases recorded) and round-trip bit for bit.
/// </summary>
public sealed class TiedWeightsTests
{
    public static TheoryData<string> Kinds => new() { "packed", "unpacked", "torch-ops", "sharded" };

    // One manager, or the two ranks of a sharded EMA over the same full model.
    private static EmaManagerBase<TModel>[] Managers<TModel>(TModel model, string kind, double decay = 0.9)
        where TModel : nn.Module, IEmaTracked<TModel> => kind switch
    {
        "packed" => [new EmaManager<TModel>(model, new EmaOptions { Decay = decay })],
        "unpacked" => [new EmaManager<TModel>(model, new EmaOptions { Decay = decay, PackParameters = false })],
        "torch-ops" => [new EmaManager<TModel>(model, new EmaOptions { Decay = decay, ForceTorchOps = true })],
        "sharded" => [new ShardedEmaManager<TModel>(model, 0, 2, new EmaOptions { Decay = decay }), new ShardedEmaManager<TModel>(model, 1, 2, new EmaOptions { Decay = decay })],
        _ => throw new ArgumentOutOfRangeException(nameof(kind)),
    };

    private static List<string> StateDictKeys<TModel>(EmaManagerBase<TModel> ema) where TModel : nn.Module, IEmaTracked<TModel> =>
        ema is EmaManager<TModel> dense ? Keys(dense.StateDict()) : Keys(((ShardedEmaManager<TModel>)ema).StateDict());

    private static List<string> Keys<T>(Dictionary<string, T> state)
    {
        var keys = state.Keys.ToList();
        foreach (var value in state.Values) (value as IDisposable)?.Dispose();
        foreach (var value in state.Values) (value as DcpShard)?.Local.Dispose();
        return keys;
    }

    private static List<string> TrainableNames(nn.Module model) =>
        model.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name).ToList();

    [Theory]
    [MemberData(nameof(Kinds))]
    public void TheKeysAreTheTrainableNamedParametersInOrder(string kind)
    {
        using var gpt = new TiedGptModel();
        Assert.Equal(6, TrainableNames(gpt).Count);
        Check(gpt, kind, new() { ["lm_head.weight"] = "wte.weight" });
        using var shared = new SharedFieldModel();
        Check(shared, kind, new() { ["decoder.weight"] = "encoder.weight", ["decoder.bias"] = "encoder.bias" });

        static void Check<TModel>(TModel model, string kind, Dictionary<string, string> aliases) where TModel : nn.Module, IEmaTracked<TModel>
        {
            var expected = TrainableNames(model);
            foreach (var ema in Managers(model, kind))
            {
                using (ema)
                {
                    Assert.Equal(expected, ema.TrackedNames);
                    Assert.Equal(expected, ema.Parameters.Select(p => p.Name));
                    Assert.Equal(expected, StateDictKeys(ema));
                    Assert.Equal(expected.Count, ema.Count);
                    Assert.Equal(aliases.OrderBy(a => a.Key), ema.TiedAliases.OrderBy(a => a.Key));
                    // An alias reaches its owner's shadow: the same tensor object.
                    foreach (var (alias, owner) in aliases)
                    {
                        Assert.True(ema.Contains(alias));
                        Assert.Same(ema[owner], ema[alias]);
                    }
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Kinds))]
    public void TheTypedShadowGivesBothNamesTheOneShadow(string kind)
    {
        using var gpt = new TiedGptModel();
        foreach (var ema in Managers(gpt, kind))
        {
            using (ema)
            {
                var shadow = ema.GetShadow<TiedGptModel.EmaShadow>();
                Assert.Same(ema["wte.weight"], shadow.wte.weight);
                Assert.Same(shadow.wte.weight, shadow.lm_head.weight);
            }
        }
        using var shared = new SharedFieldModel();
        foreach (var ema in Managers(shared, kind))
        {
            using (ema)
            {
                var shadow = ema.GetShadow<SharedFieldModel.EmaShadow>();
                Assert.Same(shadow.encoder.weight, shadow.decoder.weight);
                Assert.Same(shadow.encoder.bias, shadow.decoder.bias);
            }
        }
    }

    [Fact]
    public void ATiedModelKeepsOneShadowsWorthOfMemoryAndPacks()
    {
        using var untied = new TiedGptModel(tie: false);
        using var tied = new TiedGptModel();
        using var separate = new EmaManager<TiedGptModel>(untied);
        using var one = new EmaManager<TiedGptModel>(tied);
        // The head's [11, 6] fp32 shadow, in the arena's 64-byte steps (66 floats take 80 slots): 320 bytes fewer.
        Assert.Equal(320, separate.ShadowBytes - one.ShadowBytes);
        one.Update(tied);
        Assert.StartsWith("1 group(s), 1 packed; at the last update 1 packed group(s) ran as one pass each", one.UpdatePath);
        // Packing re-pointed the one Parameter object: both modules still reach it.
        Assert.Equal(NativeTensor.DataPointer(tied.Embedding), NativeTensor.DataPointer(tied.Head));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void TwoObjectsOverOneMemoryAreOneTensorAndStayTiedWhenPacked(bool pack)
    {
        // TiedModel's head holds another Parameter object than its embedding, over the same memory.
        using var model = new TiedModel();
        Assert.NotSame(model.Embedding, model.Head);
        using var ema = new EmaManager<TiedModel>(model, new EmaOptions { Decay = 0.5, PackParameters = pack });
        Assert.Equal(["embed.weight"], ema.TrackedNames);
        Assert.Equal("embed.weight", ema.TiedAliases["head.weight"]);
        Assert.Equal(NativeTensor.DataPointer(model.Embedding), NativeTensor.DataPointer(model.Head));
        if (pack) Assert.StartsWith("1 group(s), 1 packed", ema.UpdatePath);
        using (torch.no_grad()) model.Embedding.fill_(3f);
        ema.Update(model);
        Assert.Equal(3f, model.Head.data<float>()[0]);

        // A swap lends the shadow to both objects and gives both their memory back.
        var shadow = ema["embed.weight"].data<float>().ToArray();
        using (ema.SwapInto(model))
        {
            Assert.Equal(shadow, model.Embedding.data<float>().ToArray());
            Assert.Equal(shadow, model.Head.data<float>().ToArray());
        }
        Assert.All(model.Head.data<float>().ToArray(), v => Assert.Equal(3f, v));
        Assert.Equal(NativeTensor.DataPointer(model.Embedding), NativeTensor.DataPointer(model.Head));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void TwoNativeTensorsOverOneStorageArePackedAndSwappedTogether(bool pack)
    {
        using var model = new StorageTiedModel();
        using (torch.no_grad()) model.Embedding.fill_(1f);
        Assert.Equal(NativeTensor.DataPointer(model.Embedding), NativeTensor.DataPointer(model.Head));
        using var ema = new EmaManager<StorageTiedModel>(model, new EmaOptions { Decay = 0.5, PackParameters = pack });
        Assert.Equal(["embed.weight"], ema.TrackedNames);
        Assert.Equal("embed.weight", ema.TiedAliases["head.weight"]);
        // Packing re-pointed both objects at the flat buffer.
        Assert.Equal(NativeTensor.DataPointer(model.Embedding), NativeTensor.DataPointer(model.Head));
        if (pack) Assert.StartsWith("1 group(s), 1 packed", ema.UpdatePath);
        using (torch.no_grad()) model.Embedding.fill_(3f);
        ema.Update(model);
        Assert.All(model.Head.data<float>().ToArray(), v => Assert.Equal(3f, v));
        Assert.All(ema["embed.weight"].data<float>().ToArray(), v => Assert.Equal(2f, v));

        using (ema.SwapInto(model))
        {
            Assert.All(model.Embedding.data<float>().ToArray(), v => Assert.Equal(2f, v));
            Assert.All(model.Head.data<float>().ToArray(), v => Assert.Equal(2f, v));
        }
        Assert.All(model.Embedding.data<float>().ToArray(), v => Assert.Equal(3f, v));
        Assert.All(model.Head.data<float>().ToArray(), v => Assert.Equal(3f, v));
        Assert.Equal(NativeTensor.DataPointer(model.Embedding), NativeTensor.DataPointer(model.Head));
        ema.Update(model);
        Assert.All(ema["embed.weight"].data<float>().ToArray(), v => Assert.Equal(2.5f, v));
    }

    [Fact]
    public void ABufferOverAParametersMemoryIsNotReportedAsANewTieWhenAnotherParameterMoves()
    {
        using var model = new BufferOverParameterModel();
        using var ema = new EmaManager<BufferOverParameterModel>(model, new EmaOptions { Decay = 0.5, TrackBuffers = true, PackParameters = false });
        Assert.Contains("wref", ema.TrackedNames);
        Assert.Contains("a.weight", ema.TrackedNames);
        ema.Update(model);
        // Re-pointing an unrelated parameter makes the step look for new ties: the buffer and its parameter are none.
        using (torch.no_grad())
        {
            using var moved = model.Other.clone();
            InPlace.Release(model.Other.set_(moved), model.Other);
        }
        ema.Update(model);
    }

    [Theory]
    [MemberData(nameof(Kinds))]
    public void TheTiedShadowIsOneEmaOfTheParameter(string kind)
    {
        const double decay = 0.8;
        torch.manual_seed(30);
        using var model = new TiedGptModel();
        var managers = Managers(model, kind, decay);
        try
        {
            var expected = TensorValues.Doubles(model.Embedding);
            for (int step = 0; step < 6; step++)
            {
                using (torch.no_grad())
                {
                    foreach (var p in model.parameters()) p.add_(torch.randn(p.shape) * 0.5);
                }
                var p0 = TensorValues.Doubles(model.Embedding);
                for (int j = 0; j < expected.Length; j++) expected[j] = decay * expected[j] + (1 - decay) * p0[j];
                foreach (var ema in managers) ema.Update(model);
            }
            long rows = model.Embedding.shape[0], width = model.Embedding.shape[1];
            for (int r = 0; r < managers.Length; r++)
            {
                var (offset, size) = managers.Length == 1 ? (0L, rows) : ShardLayout.Chunk(rows, managers.Length, r);
                var actual = TensorValues.Doubles(managers[r]["lm_head.weight"]);
                Assert.Equal(size * width, actual.Length);
                for (int j = 0; j < actual.Length; j++) Assert.Equal(expected[offset * width + j], actual[j], tolerance: 1e-5);
            }
        }
        finally
        {
            foreach (var ema in managers) ema.Dispose();
        }
    }

    [Fact]
    public void CopyToWritesTheTiedTensorOnceAndBothNamesSeeIt()
    {
        using var model = new TiedGptModel();
        using var ema = new EmaManager<TiedGptModel>(model, 0.5);
        using (torch.no_grad()) model.Embedding.fill_(2f);
        ema.Update(model);
        using var target = new TiedGptModel();
        ema.CopyTo(target);
        Assert.Equal(TensorValues.Bits(ema["wte.weight"]), TensorValues.Bits(target.Embedding));
        Assert.Equal(NativeTensor.DataPointer(target.Embedding), NativeTensor.DataPointer(target.Head));
    }

    [Theory]
    [InlineData("packed")]
    [InlineData("unpacked")]
    [InlineData("sharded")]
    public async Task ACheckpointHoldsTheTensorOnceWithItsAliasesAndRoundTripsBitForBit(string kind)
    {
        using var folder = TestPaths.NewTempFolder();
        torch.manual_seed(31);
        using var model = new TiedGptModel();
        var managers = Managers(model, kind, 0.7);
        try
        {
            for (int step = 0; step < 3; step++)
            {
                using (torch.no_grad())
                {
                    foreach (var p in model.parameters()) p.add_(torch.randn(p.shape));
                }
                foreach (var ema in managers) ema.Update(model);
            }
            var dir = folder["ema"];
            if (managers[0] is EmaManager<TiedGptModel> dense) dense.Save(dir);
            else await Task.WhenAll(managers.Select(m => Task.Run(() => ((ShardedEmaManager<TiedGptModel>)m).Save(dir, "tied", TimeSpan.FromSeconds(30)))));

            var reader = DcpReader.Open(dir);
            Assert.Equal(TrainableNames(model).Select(n => "ema." + n).Order(StringComparer.Ordinal),
                reader.Entries.OfType<DcpTensorEntry>().Select(e => e.Key).Order(StringComparer.Ordinal));
            Assert.Equal("lm_head.weight=wte.weight", reader.ReadValue("ema._emagen.aliases"));

            // Into a fresh model of each kind: the stored bits, under both names.
            torch.manual_seed(99);
            using var fresh = new TiedGptModel();
            foreach (var loadKind in new[] { "packed", "unpacked", "sharded" })
            {
                var loaded = Managers(fresh, loadKind, 0.7);
                try
                {
                    for (int r = 0; r < loaded.Length; r++)
                    {
                        loaded[r].Load(dir);
                        Assert.Empty(loaded[r].LastLoadDroppedKeys);
                        var (offset, size) = loaded.Length == 1 ? (0L, 11L) : ShardLayout.Chunk(11, loaded.Length, r);
                        using var stored = reader.ReadSlice("ema.wte.weight", [offset, 0], [size, 6]);
                        Assert.Equal(TensorValues.Bits(stored), TensorValues.Bits(loaded[r]["lm_head.weight"]));
                        Assert.Equal(3, loaded[r].Step);
                    }
                }
                finally
                {
                    foreach (var ema in loaded) ema.Dispose();
                }
            }
        }
        finally
        {
            foreach (var ema in managers) ema.Dispose();
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void AWeightTiedAfterBindIsCaughtByTheNextStep(bool pack)
    {
        using var model = new TiedModel(tie: false);
        using var ema = new EmaManager<TiedModel>(model, new EmaOptions { Decay = 0.5, PackParameters = pack });
        ema.Update(model);
        var before = TensorValues.Bits(ema["embed.weight"]);
        model.Tie();
        var e = Assert.Throws<InvalidOperationException>(() => ema.Update(model));
        Assert.Contains("Parameters 'embed.weight' and 'head.weight' are now one tensor (tied after the EMA manager was built)", e.Message);
        Assert.Equal(before, TensorValues.Bits(ema["embed.weight"]));
        // Until a new manager is built.
        Assert.Throws<InvalidOperationException>(() => ema.Update(model));
    }

    [Fact]
    public void AGptTiedAfterBindIsCaughtWhenItsEmbeddingIsReadAgain()
    {
        // An Embedding's weight is read from its registered parameters, once per module object on the step path
        // (its property allocates a wrapper per read), and afresh by CopyTo and SwapInto.
        using var model = new TiedGptModel(tie: false);
        using var ema = new EmaManager<TiedGptModel>(model, new EmaOptions { Decay = 0.5 });
        ema.Update(model);
        model.Tie();
        var e = Assert.Throws<InvalidOperationException>(() => ema.CopyTo(model));
        Assert.Contains("Parameters 'wte.weight' and 'lm_head.weight' are now one tensor (tied after the EMA manager was built)", e.Message);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void AWeightUntiedAfterBindIsCaughtByTheNextStep(bool pack)
    {
        using var model = new TiedModel();
        using var ema = new EmaManager<TiedModel>(model, new EmaOptions { Decay = 0.5, PackParameters = pack });
        ema.Update(model);
        model.Untie();
        var e = Assert.Throws<InvalidOperationException>(() => ema.Update(model));
        Assert.Contains("Parameter 'head.weight' was tied to 'embed.weight' (one tensor, one shadow) when the EMA manager was built, but is now a tensor of its own", e.Message);
        Assert.Throws<InvalidOperationException>(() => ema.CopyTo(model));
    }
    [Fact]
    public void BothNamesWithDifferentValuesFailNamingBothKeysAndChangeNothing()
    {
        using var folder = TestPaths.NewTempFolder();
        using var model = new TiedGptModel();
        using var ema = new EmaManager<TiedGptModel>(model, 0.5);
        var state = ema.StateDict();
        state["lm_head.weight"] = state["wte.weight"] + 1;
        var before = TensorValues.Bits(ema["wte.weight"]);

        var e = Assert.Throws<ArgumentException>(() => ema.LoadStateDict(state));
        Assert.Contains("'wte.weight' and 'lm_head.weight' name one tied tensor of TiedGptModel but hold different values", e.Message);
        // A plain state dict written with both keys, as a PyTorch trainer or an older EmaGen might.
        DcpWriter.Save(folder["both"], state.Select(kv => new KeyValuePair<string, object?>("ema." + kv.Key, kv.Value)));
        e = Assert.Throws<ArgumentException>(() => ema.Load(folder["both"]));
        Assert.Contains("'ema.wte.weight' and 'ema.lm_head.weight' name one tied tensor", e.Message);
        Assert.Equal(before, TensorValues.Bits(ema["wte.weight"]));

        // Equal values: the alias key is set aside, and said so.
        state["lm_head.weight"] = state["wte.weight"].clone();
        ema.LoadStateDict(state);
        Assert.Equal(["lm_head.weight"], ema.LastLoadDroppedKeys);
        // The alias alone stands for its tensor too.
        state.Remove("wte.weight");
        ema.LoadStateDict(state);
        Assert.Empty(ema.LastLoadDroppedKeys);
        foreach (var t in state.Values) t.Dispose();
    }
    [Fact]
    public void PackingATiedModelLeavesItsTrainingBitForBitAsItWas()
    {
        // The optimizer holds the Parameter objects; packing re-points them, so a tied weight must stay one tensor that
        // both modules read and the optimizer writes: the run must be the unpacked run, bit for bit.
        // Both runs start from one set of weights, drawn once: the default generator is shared with tests running in
        // parallel, so seeding it twice did not promise the same draws twice.
        torch.manual_seed(32);
        using var start = new TiedGptModel();
        var initial = start.parameters().Select(p => p.detach().clone()).ToArray();
        var packed = Train(pack: true, initial);
        var unpacked = Train(pack: false, initial);
        foreach (var t in initial) t.Dispose();
        Assert.Equal(unpacked.Parameters, packed.Parameters);
        Assert.Equal(unpacked.Shadow, packed.Shadow);

        static (byte[] Parameters, byte[] Shadow) Train(bool pack, torch.Tensor[] initial)
        {
            using var model = new TiedGptModel();
            using (torch.no_grad())
            {
                foreach (var (p, value) in model.parameters().Zip(initial)) p.copy_(value);
            }
            using var ema = new EmaManager<TiedGptModel>(model, new EmaOptions { Decay = 0.9, PackParameters = pack });
            Assert.Equal(pack ? 1 : 0, ema.UpdatePath.StartsWith("1 group(s), 1 packed", StringComparison.Ordinal) ? 1 : 0);
            using var optimizer = torch.optim.Adam(model.parameters(), lr: 0.05);
            using var tokens = torch.tensor(new long[] { 1, 4, 2, 9, 3, 0, 7, 7, 5, 10 }).reshape(2, 5);
            for (int step = 0; step < 5; step++)
            {
                optimizer.zero_grad();
                using var logits = model.call(tokens);
                using var loss = nn.functional.cross_entropy(logits.reshape(-1, TiedGptModel.Vocabulary), tokens.reshape(-1));
                loss.backward();
                optimizer.step();
                ema.Update(model);
            }
            Assert.Equal(NativeTensor.DataPointer(model.Embedding), NativeTensor.DataPointer(model.Head));
            var parameters = model.parameters().SelectMany(p => TensorValues.Bits(p)).ToArray();
            return (parameters, TensorValues.Bits(ema["lm_head.weight"]));
        }
    }
    [Fact]
    public void SteadyStateUpdatesOfTiedModelsAllocateNothing()
    {
        // The tie check runs only after a tensor changed; an unchanged tied model costs the step what an untied one does.
        using var gpt = new TiedGptModel();
        using var twoObjects = new TiedModel();
        using var packed = new EmaManager<TiedGptModel>(gpt, 0.9);
        using var unpacked = new EmaManager<TiedModel>(twoObjects, new EmaOptions { Decay = 0.9, PackParameters = false });
        using var sharded = new ShardedEmaManager<TiedGptModel>(gpt, 1, 2, new EmaOptions { Decay = 0.9 });
        Assert.Equal(0, Allocations.OfSteadyState(() =>
        {
            packed.Update(gpt);
            unpacked.Update(twoObjects);
            sharded.Update(gpt);
        }, warmup: 5, measured: 10));
    }
    [Fact]
    public void EachProfileKeepsOneShadowAndRecordsTheAliasesInItsSubtree()
    {
        using var folder = TestPaths.NewTempFolder();
        torch.manual_seed(33);
        using var model = new TiedGptModel();
        var profiles = new EmaProfileOptions[] { new("fast", EmaSchedule.Constant(0.5)), new("slow", EmaSchedule.Constant(0.9)) };
        using var ema = new EmaManager<TiedGptModel>(model, new EmaOptions { Profiles = profiles });
        var start = TensorValues.Doubles(model.Embedding);
        using (torch.no_grad()) model.Embedding.add_(1f);
        ema.Update(model);
        var p = TensorValues.Doubles(model.Embedding);
        for (int k = 0; k < 2; k++)
        {
            double decay = k == 0 ? 0.5 : 0.9;
            Assert.Equal(TrainableNames(model), ema.Profiles[k].StateDict().Keys);
            Assert.Same(ema.Profiles[k]["wte.weight"], ema.Profiles[k]["lm_head.weight"]);
            var actual = TensorValues.Doubles(ema.Profiles[k]["lm_head.weight"]);
            for (int j = 0; j < actual.Length; j++) Assert.Equal(decay * start[j] + (1 - decay) * p[j], actual[j], tolerance: 1e-6);
        }
        ema.Save(folder["ema"]);
        var reader = DcpReader.Open(folder["ema"]);
        Assert.Equal("lm_head.weight=wte.weight", reader.ReadValue("ema.fast._emagen.aliases"));
        Assert.Equal("lm_head.weight=wte.weight", reader.ReadValue("ema.slow._emagen.aliases"));
        Assert.Null(reader.Metadata.Find("ema.fast.lm_head.weight"));

        // One profile's subtree alone loads into a single-profile manager.
        using var single = new EmaManager<TiedGptModel>(new TiedGptModel(), new EmaOptions { Decay = 0.9 });
        single.Load(folder["ema"], prefix: "ema.slow.", allowScheduleMismatch: true);
        Assert.Equal(TensorValues.Bits(ema.Profiles[1]["wte.weight"]), TensorValues.Bits(single["lm_head.weight"]));
    }
}

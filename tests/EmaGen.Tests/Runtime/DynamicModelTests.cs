using System;
using System.Collections.Generic;
using System.Linq;
using EmaGen.Dcp;
using EmaGen.Tests.Models;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace EmaGen.Tests.Runtime;

/// <summary>
/// Models as people write them (Sequential in a Module&lt;Tensor, Tensor&gt; field, containers, RNNs, attention,
/// transformers, base classes, untracked submodule classes) with only [EmaTracked] + partial added: the names equal
/// TorchSharp's reflection registration, the EMA follows the closed form over real optimizer steps, and shadows, swaps,
/// checkpoints, profiles and the sharded manager work on them.
/// </summary>
public sealed class DynamicModelTests
{
    [Fact]
    public void SequentialNamesMatchReflection() => NameContractTests.AssertContract(r => new SequentialModel(r),
        "layers.conv2d-1.weight", "layers.conv2d-1.bias",
        "layers.blck-8.lin.weight", "layers.blck-8.lin.bias", "layers.blck-8.norm.weight", "layers.blck-8.norm.bias",
        "unnamed.0.weight", "unnamed.0.bias", "unnamed.2.weight", "unnamed.2.bias",
        "head.weight", "head.bias");

    [Fact]
    public void ContainerNamesMatchReflection() => NameContractTests.AssertContract(r => new ContainerModel(r),
        "heads.cls.weight", "heads.cls.bias", "heads.box.0.weight", "heads.box.0.bias", "heads.box.1.weight", "heads.box.1.bias",
        "list.0.gain", "list.0.proj.weight", "list.0.proj.bias", "list.1.gain", "list.1.proj.weight", "list.1.proj.bias",
        "single.gain", "single.proj.weight", "single.proj.bias",
        "scales.0", "scales.1", "extras.temperature",
        "norm.weight", "norm.bias",
        "probe.0.weight", "probe.0.bias");

    [Fact]
    public void RecurrentAndAttentionNamesMatchReflection()
    {
        NameContractTests.AssertContract(r => new RecurrentModel(r));
        using var model = new RecurrentModel(false);
        using var ema = new EmaManager<RecurrentModel>(model);
        Assert.Contains("lstm.weight_hh_l1_reverse", ema.TrackedNames);
        Assert.DoesNotContain("gru.bias_ih_l0", ema.TrackedNames);
        Assert.Contains("attention.bias_k", ema.TrackedNames);
        Assert.Contains("attention.v_proj_weight", ema.TrackedNames);
        Assert.Contains("selfAttention.in_proj_weight", ema.TrackedNames);
    }

    [Fact]
    public void TransformerNamesMatchReflection()
    {
        NameContractTests.AssertContract(r => new TransformerModel(r));
        using var model = new TransformerModel(false);
        using var ema = new EmaManager<TransformerModel>(model);
        Assert.Equal("embed.weight", ema.TrackedNames[0]);
        Assert.Contains("encoder.layers.1.self_attn.in_proj_weight", ema.TrackedNames);
        Assert.Contains("decoderLayer.multihead_attn.out_proj.bias", ema.TrackedNames);
        Assert.Contains("transformer.decoder.norm.weight", ema.TrackedNames);
        Assert.Contains("encoderLayer.linear2.bias", ema.TrackedNames);
        Assert.Contains("decoder.layers.0.multihead_attn.in_proj_weight", ema.TrackedNames);
        Assert.Equal("lmHead.bias", ema.TrackedNames[^1]);
    }

    [Fact]
    public void BaseClassFieldsMatchReflection() => NameContractTests.AssertContract(r => new DerivedModel(r),
        "own", "shift", "head.weight", "head.bias", "norm.weight", "norm.bias", "inner.weight", "inner.bias", "conv.weight", "conv.bias");

    [Fact]
    public void UntrackedSubmoduleClassesMatchReflection() => NameContractTests.AssertContract(r => new TopLevelOnlyModel(r),
        "blocks.b0.gain", "blocks.b0.proj.weight", "blocks.b0.proj.bias",
        "blocks.b1.gain", "blocks.b1.proj.weight", "blocks.b1.proj.bias",
        "output.weight", "output.bias");

    [Fact]
    public void ArraysOfUntrackedClassesAreRegisteredAsModuleLists()
    {
        using var model = new UntrackedArrayModel();
        using var ema = new EmaManager<UntrackedArrayModel>(model);
        var names = model.named_parameters().Select(p => p.name).ToArray();
        Assert.Equal(new[] { "stages.0.gain", "stages.0.proj.weight", "stages.0.proj.bias", "stages.1.gain", "stages.1.proj.weight", "stages.1.proj.bias", "head.weight", "head.bias" }, names);
        Assert.Equal(names, ema.TrackedNames);
        Assert.Same(ema["stages.1.proj.bias"], ema.Shadow.stages[1]["proj.bias"]);
    }

    [Fact]
    public void PostHocSnapshotsOfADynamicModelSynthesize()
    {
        using var folder = TestPaths.NewTempFolder();
        torch.manual_seed(17);
        using var model = new SequentialModel(false);
        using var ema = new EmaManager<SequentialModel>(model, new EmaOptions
        {
            Profiles = [new("a", EmaSchedule.PowerFunction(0.05)), new("b", EmaSchedule.PowerFunction(0.10))],
        });
        // Constant parameters: every profile, snapshot and synthesis must give each tensor back (coefficients sum to 1),
        // so a tensor read or written under another's name would show.
        for (int step = 1; step <= 40; step++)
        {
            ema.Update(model);
            if (step % 10 == 0) PostHocEma.SaveSnapshot(ema, folder["snapshots"], ScalarType.Float32);
        }
        var result = PostHocEma.Synthesize(folder["snapshots"], 0.075, 40, folder["out"]);
        Assert.Equal(8, result.Terms.Count);
        using var other = new SequentialModel(false);
        using var synthesized = new EmaManager<SequentialModel>(other, new EmaOptions { Schedule = EmaSchedule.PowerFunction(0.075) });
        synthesized.Load(folder["out"]);
        Assert.Equal(ema.TrackedNames, synthesized.TrackedNames);
        foreach (var name in ema.TrackedNames)
        {
            var expected = model.get_parameter(name)!.data<float>().ToArray();
            var actual = synthesized[name].data<float>().ToArray();
            for (int i = 0; i < expected.Length; i++)
            {
                Assert.True(Math.Abs(actual[i] - expected[i]) <= 1e-4 * Math.Max(1, Math.Abs(expected[i])), $"{name}[{i}]: {actual[i]} vs {expected[i]}");
            }
        }
    }

    [Fact]
    public void BuffersOfDynamicMembersFollowNamedBuffers()
    {
        using var model = new ContainerModel(false);
        using var ema = new EmaManager<ContainerModel>(model, new EmaOptions { TrackBuffers = true });
        Assert.Equal(model.named_buffers().Select(b => b.name), ema.Buffers.Select(b => b.Name));
        Assert.Contains("norm.running_mean", ema.TrackedNames);
        Assert.Contains("single.steps", ema.TrackedNames);
        // The ignored Sequential is registered and listed, never averaged.
        Assert.Equal(EmaExclusion.Ignored, ema.Parameters.Single(p => p.Name == "probe.0.weight").Exclusion);
        Assert.False(ema.Contains("probe.0.weight"));
    }

    [Fact]
    public void TypedShadowIndexesDynamicMembersByTheirOwnNames()
    {
        using var model = new SequentialModel(false);
        model.get_parameter("head.weight")!.requires_grad = true;
        using var ema = new EmaManager<SequentialModel>(model);
        var shadow = ema.Shadow;
        Assert.Same(ema["layers.blck-8.lin.weight"], shadow.layers["blck-8.lin.weight"]);
        Assert.Equal("layers", shadow.layers.FullName);
        Assert.Equal(new[] { "0.weight", "0.bias", "2.weight", "2.bias" }, shadow.unnamed.Names);
        Assert.Equal(0, shadow.empty.Count);
        Assert.Same(ema["head.bias"], shadow.head.bias);
        var missing = Assert.Throws<KeyNotFoundException>(() => shadow.layers["blck-8.lin.scale"]);
        Assert.Contains("'layers'", missing.Message);
        Assert.Contains("'blck-8.lin.weight'", missing.Message);
        // Buffers are listed by their named_buffers() names and say why they have no shadow.
        var buffer = Assert.Throws<InvalidOperationException>(() => shadow.layers["blck-8.norm.running_mean"]);
        Assert.Contains("TrackBuffers", buffer.Message);

        using var container = new ContainerModel(false);
        using var ema2 = new EmaManager<ContainerModel>(container);
        Assert.Same(ema2["list.1.proj.weight"], ema2.Shadow.list[1]["proj.weight"]);
        Assert.Same(ema2["scales.1"], ema2.Shadow.scales["1"]);
    }

    [Fact]
    public void ClosedFormHoldsOverRealOptimizerSteps()
    {
        torch.manual_seed(21);
        using var model = new TransformerModel(false);
        using var ema = new EmaManager<TransformerModel>(model, 0.9);
        using var optimizer = torch.optim.AdamW(model.parameters(), lr: 0.01);
        var expected = model.named_parameters().ToDictionary(p => p.name, p => Doubles(p.parameter));
        var tokens = torch.randint(0, 11, new long[] { 4, 6 });
        var targets = torch.randint(0, 11, new long[] { 4, 6 });
        for (int step = 0; step < 12; step++)
        {
            optimizer.zero_grad();
            using var logits = model.call(tokens);
            using var loss = nn.functional.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1));
            loss.backward();
            optimizer.step();
            ema.Update(model);
            foreach (var (name, p) in model.named_parameters())
            {
                var e = expected[name];
                var v = Doubles(p);
                for (int i = 0; i < e.Length; i++) e[i] = 0.9 * e[i] + 0.1 * v[i];
            }
        }
        var moved = new List<string>();
        foreach (var name in ema.TrackedNames)
        {
            var actual = ema[name].data<float>().ToArray();
            var e = expected[name];
            for (int i = 0; i < e.Length; i++)
            {
                Assert.True(Math.Abs(actual[i] - e[i]) <= 1e-5 + 1e-5 * Math.Abs(e[i]), $"{name}[{i}]: {actual[i]} vs {e[i]}");
            }
            if (!model.get_parameter(name)!.data<float>().ToArray().SequenceEqual(actual)) moved.Add(name);
        }
        // forward() uses the embedding, the encoder (dynamic) and the head (static): the optimizer moved all of them
        // and the EMA lags behind each.
        var used = ema.TrackedNames.Where(n => n.StartsWith("embed.") || n.StartsWith("encoder.") || n.StartsWith("lmHead.")).ToList();
        Assert.Equal(1 + 24 + 2, used.Count);
        Assert.Equal(used, moved.Where(used.Contains));
    }

    [Fact]
    public void SwapCopyAndProfilesWorkOnDynamicMembers()
    {
        torch.manual_seed(5);
        using var model = new SequentialModel(false);
        using var ema = new EmaManager<SequentialModel>(model, new EmaOptions
        {
            Profiles = [new("fast", EmaSchedule.Constant(0.5)), new("slow", EmaSchedule.Constant(0.99))],
        });
        for (int i = 0; i < 4; i++)
        {
            UpdateNumericsTests.RandomizeParameters(model);
            ema.Update(model);
        }
        var before = model.named_parameters().ToDictionary(p => p.name, p => p.parameter.data<float>().ToArray());
        using (ema.Profile("fast").SwapInto(model))
        {
            Assert.Equal(ema.Profile("fast")["layers.blck-8.lin.weight"].data<float>().ToArray(),
                model.get_parameter("layers.blck-8.lin.weight")!.data<float>().ToArray());
            Assert.Equal(ema.Profile("fast").Shadow.unnamed["2.bias"].data<float>().ToArray(), model.get_parameter("unnamed.2.bias")!.data<float>().ToArray());
        }
        foreach (var (name, p) in model.named_parameters()) Assert.Equal(before[name], p.data<float>().ToArray());

        using var copy = new SequentialModel(false);
        ema.Profile("slow").CopyTo(copy);
        foreach (var name in ema.TrackedNames)
        {
            Assert.Equal(ema.Profile("slow")[name].data<float>().ToArray(), copy.get_parameter(name)!.data<float>().ToArray());
        }
        Assert.NotEqual(ema.Profile("slow")["layers.conv2d-1.weight"].data<float>().ToArray(), ema.Profile("fast")["layers.conv2d-1.weight"].data<float>().ToArray());
    }

    [Fact]
    public void CheckpointRoundTripIsBitExact()
    {
        using var folder = TestPaths.NewTempFolder();
        torch.manual_seed(8);
        using var model = new ContainerModel(false);
        using var ema = new EmaManager<ContainerModel>(model, new EmaOptions { Decay = 0.8, TrackBuffers = true });
        for (int i = 0; i < 3; i++)
        {
            UpdateNumericsTests.RandomizeParameters(model);
            ema.Update(model);
        }
        ema.Save(folder["ckpt"]);
        var keys = DcpReader.Open(folder["ckpt"]).Entries.Select(e => e.Key).ToHashSet();
        Assert.Contains("ema.heads.box.1.weight", keys);
        Assert.Contains("ema.norm.running_var", keys);

        using var other = new ContainerModel(false);
        using var restored = new EmaManager<ContainerModel>(other, new EmaOptions { Decay = 0.8, TrackBuffers = true });
        restored.Load(folder["ckpt"]);
        Assert.Equal(ema.TrackedNames, restored.TrackedNames);
        foreach (var name in ema.TrackedNames)
        {
            Assert.Equal(ema[name].to(ScalarType.Float64).data<double>().ToArray(), restored[name].to(ScalarType.Float64).data<double>().ToArray());
        }
    }

    [Fact]
    public void ShardedRanksTogetherHoldTheDenseEma()
    {
        torch.manual_seed(13);
        using var model = new TransformerModel(false);
        using var dense = new EmaManager<TransformerModel>(model, 0.9);
        using var rank0 = new ShardedEmaManager<TransformerModel>(model, 0, 2, new EmaOptions { Decay = 0.9 });
        using var rank1 = new ShardedEmaManager<TransformerModel>(model, 1, 2, new EmaOptions { Decay = 0.9 });
        for (int i = 0; i < 3; i++)
        {
            UpdateNumericsTests.RandomizeParameters(model);
            dense.Update(model);
            rank0.Update(model);
            rank1.Update(model);
        }
        Assert.Equal(dense.Count, rank0.Count);
        Assert.All(dense.TrackedNames, n => Assert.True(rank1.Contains(n), n));
        foreach (var name in dense.TrackedNames)
        {
            using var joined = torch.cat(new[] { rank0[name], rank1[name] }, 0);
            Assert.Equal(dense[name].data<float>().ToArray(), joined.data<float>().ToArray());
        }
    }

    [Fact]
    public void SteadyStateUpdatesOfDynamicModelsAllocateNothing()
    {
        using var model = new TransformerModel(false);
        using var container = new ContainerModel(false);
        using var dense = new EmaManager<TransformerModel>(model, 0.9);
        using var withBuffers = new EmaManager<ContainerModel>(container, 0.9);
        using var sharded = new ShardedEmaManager<TransformerModel>(model, 1, 2, new EmaOptions { Decay = 0.9 });
        for (int i = 0; i < 5; i++)
        {
            dense.Update(model);
            withBuffers.Update(container);
            sharded.Update(model);
        }
        long Measure(Action update)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < 10; i++) update();
            return GC.GetAllocatedBytesForCurrentThread() - before;
        }
        using var rec = new RecurrentModel(false); using var recEma = new EmaManager<RecurrentModel>(rec, 0.9);
        using var seq = new SequentialModel(false); using var seqEma = new EmaManager<SequentialModel>(seq, 0.9);
        for (int i = 0; i < 5; i++) { recEma.Update(rec); seqEma.Update(seq); }
        var dbg = (Measure(() => recEma.Update(rec)), Measure(() => seqEma.Update(seq)));
        var allocated = (Dbg: dbg, Dense: Measure(() => dense.Update(model)), Containers: Measure(() => withBuffers.Update(container)), Sharded: Measure(() => sharded.Update(model)));
        Assert.True(allocated == ((0, 0), 0, 0, 0), $"bytes allocated over 10 updates each: {allocated}");
    }

    private static double[] Doubles(Tensor t) => t.data<float>().ToArray().Select(v => (double)v).ToArray();
}

using System;
using System.Collections.Generic;
using System.Linq;
using System.Threading.Tasks;
using EmaGen.Dcp;
using EmaGen.Tests.Models;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;

namespace EmaGen.Tests.Runtime;

/// <summary>
/// The dense manager and the sharded manager at world size 1 are one core: the same scenario through both (profiles,
/// updates, asynchronous saves, strict and partial-profile loads, a mismatched model) behaves the same, with bitwise-equal
/// shadows and byte-equal tensor data in the two checkpoints, each loadable by the other manager.
/// </summary>
public sealed class OneCoreTests
{
    private static readonly long[] Sizes = { 6, 10, 1, 33 };

    private static EmaProfileOptions[] Profiles() =>
    [
        new("fast", EmaSchedule.Constant(0.9)),
        new("power", EmaSchedule.PowerFunction(0.10)),
        new("every2", new UpdateEverySchedule(EmaSchedule.Constant(0.8), 2)),
    ];

    [Fact]
    public async Task DenseAndShardedAtWorldSizeOneBehaveAlike()
    {
        using var folder = TestPaths.NewTempFolder();
        using var model = new SizedModel(torch.ScalarType.Float32, Sizes);
        using var dense = new EmaManager<SizedModel>(model, new EmaOptions { Profiles = Profiles() });
        using var sharded = new ShardedEmaManager<SizedModel>(model, 0, 1, new EmaOptions { Profiles = Profiles() });
        Assert.Contains("packed", dense.UpdatePath);
        for (int step = 0; step < 5; step++)
        {
            UpdateNumericsTests.RandomizeParameters(model);
            dense.Update(model);
            sharded.Update(model);
        }
        AssertSameShadows(dense, sharded);
        Assert.Equal(dense.ShadowBytes, sharded.ShadowBytes);

        // Asynchronous saves: the live shadows may change once the call returns.
        var denseSave = dense.SaveAsync(folder["dense"]);
        var shardedSave = sharded.SaveAsync(folder["sharded"], "one", TimeSpan.FromSeconds(30));
        UpdateNumericsTests.RandomizeParameters(model);
        dense.Update(model);
        sharded.Update(model);
        await Task.WhenAll(denseSave, shardedSave);
        var denseReader = DcpReader.Open(folder["dense"]);
        var shardedReader = DcpReader.Open(folder["sharded"]);
        var keys = denseReader.Entries.Select(e => e.Key).Order(StringComparer.Ordinal).ToList();
        Assert.Equal(keys, shardedReader.Entries.Select(e => e.Key).Order(StringComparer.Ordinal));
        foreach (var key in keys)
        {
            if (denseReader.Metadata.Find(key) is DcpTensorEntry)
            {
                using var a = denseReader.ReadTensor(key);
                using var b = shardedReader.ReadTensor(key);
                Assert.True(a.bytes.SequenceEqual(b.bytes), key);
            }
            else
            {
                Assert.Equal(denseReader.ReadValue(key), shardedReader.ReadValue(key));
            }
        }

        // Each loads the other's checkpoint, strictly, to the same bits and step.
        using var other = new SizedModel(torch.ScalarType.Float32, Sizes);
        using var denseFromSharded = new EmaManager<SizedModel>(other, new EmaOptions { Profiles = Profiles() });
        using var shardedFromDense = new ShardedEmaManager<SizedModel>(other, 0, 1, new EmaOptions { Profiles = Profiles() });
        denseFromSharded.Load(folder["sharded"]);
        shardedFromDense.Load(folder["dense"]);
        Assert.Equal(5, denseFromSharded.Step);
        AssertSameShadows(denseFromSharded, shardedFromDense);

        // Partial-profile loads: refused when strict, with the same text; otherwise the shared profile alone.
        EmaProfileOptions[] partial = [Profiles()[0], new("slow", EmaSchedule.Constant(0.999))];
        using var densePartial = new EmaManager<SizedModel>(other, new EmaOptions { Profiles = partial });
        using var shardedPartial = new ShardedEmaManager<SizedModel>(other, 0, 1, new EmaOptions { Profiles = partial });
        var strictDense = Assert.Throws<ArgumentException>(() => densePartial.Load(folder["dense"]));
        var strictSharded = Assert.Throws<ArgumentException>(() => shardedPartial.Load(folder["dense"]));
        Assert.Equal(strictDense.Message, strictSharded.Message);
        densePartial.Load(folder["dense"], strict: false);
        shardedPartial.Load(folder["sharded"], strict: false);
        AssertSameShadows(densePartial, shardedPartial);
        Assert.True(densePartial.Profiles[0]["leaves.3.w"].bytes.SequenceEqual(denseFromSharded.Profiles[0]["leaves.3.w"].bytes));

        // A model that does not fit: the same refusal, word for word, and nothing written.
        using var wrong = new SizedModel(torch.ScalarType.Float32, 6, 11, 1, 33);
        using var denseWrong = new EmaManager<SizedModel>(wrong, new EmaOptions { Profiles = Profiles() });
        using var shardedWrong = new ShardedEmaManager<SizedModel>(wrong, 0, 1, new EmaOptions { Profiles = Profiles() });
        var before = denseWrong.Profiles[0].StateDict();
        var denseError = Assert.Throws<ArgumentException>(() => denseWrong.Load(folder["dense"]));
        var shardedError = Assert.Throws<ArgumentException>(() => shardedWrong.Load(folder["dense"]));
        Assert.Equal(denseError.Message, shardedError.Message);
        Assert.Contains("'leaves.1.w': shape [10], expected [11]", denseError.Message);
        Assert.True(before["leaves.1.w"].bytes.SequenceEqual(denseWrong.Profiles[0]["leaves.1.w"].bytes));
        var stateError = Assert.Throws<ArgumentException>(() => denseWrong.Profiles[1].LoadStateDict(dense.Profiles[1].StateDict()));
        var shardedStateError = Assert.Throws<ArgumentException>(() => shardedWrong.Profiles[1].LoadStateDict(sharded.Profiles[1].StateDict()));
        Assert.Equal(stateError.Message, shardedStateError.Message);
    }

    [Fact]
    public void TheShardedManagersTorchSharpOpPathRunsOnTheCpuCloseToTheKernels()
    {
        // The device path (TorchSharp ops on boxes, what a CUDA rank runs) forced on the CPU, against the raw kernels:
        // within the bound OneFormulaTests derives (6·steps·ε·M, M the largest parameter magnitude fed), since lerp_
        // may fuse its multiply-add.
        torch.manual_seed(24);
        using var model = new SizedModel(torch.ScalarType.Float32, Sizes);
        var options = new EmaOptions { Profiles = Profiles() };
        for (int rank = 0; rank < 2; rank++)
        {
            using var raw = new ShardedEmaManager<SizedModel>(model, rank, 2, options);
            using var ops = new ShardedEmaManager<SizedModel>(model, rank, 2, new EmaOptions { Profiles = Profiles(), ForceTorchOps = true });
            double largest = 0;
            for (int step = 0; step < 4; step++)
            {
                largest = Math.Max(largest, Enumerable.Range(0, model.Count).Max(i => TensorValues.Doubles(model[i]).Max(Math.Abs)));
                UpdateNumericsTests.RandomizeParameters(model);
                largest = Math.Max(largest, Enumerable.Range(0, model.Count).Max(i => TensorValues.Doubles(model[i]).Max(Math.Abs)));
                raw.Update(model);
                ops.Update(model);
            }
            Assert.DoesNotContain("TorchSharp ops", raw.UpdatePath);
            // Every box with elements went through TorchSharp ops (rank 1's box of the one-row tensor is empty).
            int boxes = raw.TrackedNames.Count(n => raw[n].numel() > 0);
            Assert.Contains($"through TorchSharp ops: 0 packed group(s) and {boxes} tensor(s)", ops.UpdatePath);
            double bound = 6 * 4 * Math.Pow(2, -23) * largest;
            for (int k = 0; k < options.Profiles!.Count; k++)
            {
                foreach (var name in raw.TrackedNames)
                {
                    var a = TensorValues.Doubles(raw.Profiles[k][name]);
                    var b = TensorValues.Doubles(ops.Profiles[k][name]);
                    for (int j = 0; j < a.Length; j++) Assert.True(Math.Abs(a[j] - b[j]) <= bound, $"rank {rank} {raw.Profiles[k].Name}/{name}[{j}]");
                }
            }
        }
    }

    private static void AssertSameShadows(EmaManager<SizedModel> dense, ShardedEmaManager<SizedModel> sharded)
    {
        Assert.Equal(dense.Step, sharded.Step);
        Assert.Equal(dense.TrackedNames, sharded.TrackedNames);
        for (int k = 0; k < dense.Profiles.Count; k++)
        {
            Assert.Equal(dense.Profiles[k].Name, sharded.Profiles[k].Name);
            Assert.Equal(dense.Profiles[k].CurrentDecay, sharded.Profiles[k].CurrentDecay);
            foreach (var name in dense.TrackedNames)
            {
                Assert.True(dense.Profiles[k][name].bytes.SequenceEqual(sharded.Profiles[k][name].bytes), $"{dense.Profiles[k].Name}/{name}");
            }
        }
    }
}

using System;
using System.IO;
using System.Linq;
using EmaGen.Dcp;
using EmaGen.Tests.Models;
using EmaGen.Tests.Runtime;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;

namespace EmaGen.Tests.Dcp;

/// <summary>EmaManager.Save/Load: exact round trip with the step, strict names, and loads that fail without changing anything.</summary>
public sealed class EmaCheckpointTests
{
    [Fact]
    public void SaveThenLoadIntoAFreshManagerIsBitExact()
    {
        using var folder = TestPaths.NewTempFolder();
        using var model = new NestedModel(reflection: false);
        using var ema = new EmaManager<NestedModel>(model, 0.9);
        for (int i = 0; i < 3; i++)
        {
            UpdateNumericsTests.RandomizeParameters(model);
            ema.Update(model);
        }
        ema.Save(folder["ckpt"]);

        using var other = new NestedModel(reflection: false);
        using var restored = new EmaManager<NestedModel>(other, 0.9);
        restored.Load(folder["ckpt"]);
        Assert.Equal(3, restored.Step);
        foreach (var name in ema.TrackedNames) Assert.Equal(ema[name].data<float>().ToArray(), restored[name].data<float>().ToArray());

        var reader = DcpReader.Open(folder["ckpt"]);
        Assert.Contains(reader.Entries, e => e.Key == "ema.middle.weight");
        Assert.Equal(EmaCheckpoint.Format, reader.ReadValue("ema._emagen.format"));
        Assert.Equal(3L, reader.ReadValue("ema._emagen.step"));
    }

    [Fact]
    public void PrefixSeparatesKeySpaces()
    {
        using var folder = TestPaths.NewTempFolder();
        using var model = new BareParameters(reflection: false);
        using var ema = new EmaManager<BareParameters>(model);
        ema.Save(folder["ckpt"], prefix: "model_ema.");
        Assert.All(DcpReader.Open(folder["ckpt"]).Entries, e => Assert.StartsWith("model_ema.", e.Key));
        ema.Load(folder["ckpt"], prefix: "model_ema.");
        var e = Assert.Throws<ArgumentException>(() => ema.Load(folder["ckpt"]));
        Assert.Contains("3 missing (alpha, beta, gamma)", e.Message);
    }

    [Fact]
    public void FailedLoadsChangeNothing()
    {
        using var folder = TestPaths.NewTempFolder();
        using var small = new SizedModel(TorchSharp.torch.ScalarType.Float32, 3, 5);
        using var smallEma = new EmaManager<SizedModel>(small, 0.5);
        smallEma.Save(folder["small"]);
        using var big = new SizedModel(TorchSharp.torch.ScalarType.Float32, 3, 6);
        using var bigEma = new EmaManager<SizedModel>(big, 0.5);
        var before = bigEma.TrackedNames.ToDictionary(n => n, n => bigEma[n].data<float>().ToArray());

        var shape = Assert.Throws<ArgumentException>(() => bigEma.Load(folder["small"]));
        Assert.Contains("'leaves.1.w': shape [5], expected [6]", shape.Message);

        using var decayed = new EmaManager<SizedModel>(small, 0.7);
        var decay = Assert.Throws<ArgumentException>(() => decayed.Load(folder["small"]));
        Assert.Contains("schedule Constant(decay=0.5)", decay.Message);
        decayed.Load(folder["small"], allowScheduleMismatch: true);

        // Damage the data file: the reader reports it, and nothing was written.
        var data = Path.Combine(folder["small"], "__0_0.distcp");
        var bytes = File.ReadAllBytes(data);
        for (int i = bytes.Length / 2; i < bytes.Length / 2 + 64; i++) bytes[i] ^= 0xFF;
        File.WriteAllBytes(data, bytes);
        using var again = new SizedModel(TorchSharp.torch.ScalarType.Float32, 3, 5);
        using var againEma = new EmaManager<SizedModel>(again, 0.5);
        var kept = againEma.TrackedNames.ToDictionary(n => n, n => againEma[n].data<float>().ToArray());
        Assert.Throws<CheckpointFormatException>(() => againEma.Load(folder["small"]));
        foreach (var (name, values) in kept) Assert.Equal(values, againEma[name].data<float>().ToArray());
        foreach (var (name, values) in before) Assert.Equal(values, bigEma[name].data<float>().ToArray());
        Assert.Throws<DirectoryNotFoundException>(() => againEma.Load(folder["missing"]));
    }

    [Fact]
    public void RealPyTorchLoadsAnEmaCheckpoint()
    {
        using var folder = TestPaths.NewTempFolder();
        using var model = new NestedModel(reflection: false);
        using var ema = new EmaManager<NestedModel>(model, 0.9);
        UpdateNumericsTests.RandomizeParameters(model);
        ema.Update(model);
        ema.Save(folder["ckpt"]);
        var expected = new System.Text.Json.Nodes.JsonObject();
        foreach (var name in ema.TrackedNames)
        {
            var t = ema[name];
            expected["ema." + name] = new System.Text.Json.Nodes.JsonObject
            {
                ["dtype"] = "float32",
                ["shape"] = new System.Text.Json.Nodes.JsonArray(t.shape.Select(d => (System.Text.Json.Nodes.JsonNode)d).ToArray()),
                ["values"] = new System.Text.Json.Nodes.JsonArray(t.data<float>().ToArray().Select(v => (System.Text.Json.Nodes.JsonNode)(double)v).ToArray()),
            };
        }
        expected["ema._emagen.step"] = new System.Text.Json.Nodes.JsonObject { ["value"] = 1 };
        expected["ema._emagen.decay"] = new System.Text.Json.Nodes.JsonObject { ["value"] = 0.9 };
        expected["ema._emagen.current_decay"] = new System.Text.Json.Nodes.JsonObject { ["value"] = 0.9 };
        expected["ema._emagen.format"] = new System.Text.Json.Nodes.JsonObject { ["value"] = EmaCheckpoint.Format };
        expected["ema._emagen.schedule"] = new System.Text.Json.Nodes.JsonObject { ["value"] = "Constant(decay=0.9)" };
        File.WriteAllText(folder["expected.json"], expected.ToJsonString());
        var output = PythonTorch.Run("load_with_torch.py", folder["ckpt"], folder["expected.json"]);
        Assert.Contains($"OK {ema.Count} tensor records", output);
    }

    [Fact]
    public async System.Threading.Tasks.Task SaveAsyncWritesTheStateAtTheCallWhileUpdatesGoOn()
    {
        using var folder = TestPaths.NewTempFolder();
        using var model = new NestedModel(reflection: false);
        using var ema = new EmaManager<NestedModel>(model, new EmaOptions
        {
            Profiles = [new("narrow", EmaSchedule.PowerFunction(0.05)), new("wide", EmaSchedule.PowerFunction(0.10))],
        });
        for (int i = 0; i < 3; i++)
        {
            UpdateNumericsTests.RandomizeParameters(model);
            ema.Update(model);
        }
        var atCall = ema.Profiles.Select(p => p.StateDict()).ToList();
        var save = ema.SaveAsync(folder["ckpt"]);
        var snapshot = PostHocEma.SaveSnapshotAsync(ema, folder["snapshots"]);
        for (int i = 0; i < 5; i++)
        {
            UpdateNumericsTests.RandomizeParameters(model);
            ema.Update(model);
        }
        // A second call reuses the staging buffer once the first write is done with it.
        var later = ema.StateDict();
        var second = ema.SaveAsync(folder["ckpt2"]);
        await save;
        await second;
        Assert.Equal(Path.Combine(folder["snapshots"], "step-0000000003"), await snapshot);
        var reread = DcpReader.Open(folder["ckpt2"]);
        Assert.Equal(8L, reread.ReadValue("ema._emagen.step"));
        Assert.Equal(later["bias"].data<float>().ToArray(), reread.ReadTensor("ema.narrow.bias").data<float>().ToArray());

        using var other = new NestedModel(reflection: false);
        using var loaded = new EmaManager<NestedModel>(other, new EmaOptions
        {
            Profiles = [new("narrow", EmaSchedule.PowerFunction(0.05)), new("wide", EmaSchedule.PowerFunction(0.10))],
        });
        loaded.Load(folder["ckpt"]);
        Assert.Equal(3, loaded.Step);
        for (int k = 0; k < 2; k++)
        {
            foreach (var (name, tensor) in atCall[k]) Assert.Equal(tensor.data<float>().ToArray(), loaded.Profiles[k][name].data<float>().ToArray());
        }
        var stored = DcpReader.Open(Path.Combine(folder["snapshots"], "step-0000000003")).ReadTensor("wide.middle.weight");
        Assert.Equal(torch.ScalarType.Float16, stored.dtype);
        Assert.Equal(atCall[1]["middle.weight"].to_type(torch.ScalarType.Float16).data<Half>().ToArray(), stored.data<Half>().ToArray());

        // A write that fails in the background faults the task and leaves the previous checkpoint in place; the next
        // save call reports it once more (for a trainer that never awaited it), then saves.
        using (FileOps.FailAt("data"))
        {
            await Assert.ThrowsAsync<IOException>(() => ema.SaveAsync(folder["ckpt"]));
        }
        loaded.Load(folder["ckpt"]);
        Assert.Equal(3, loaded.Step);
        var again = Assert.Throws<IOException>(() => ema.Save(folder["ckpt"]));
        Assert.Contains("simulated failure at data", again.Message);
        ema.Save(folder["ckpt"]);
    }

    [Fact]
    public void RealPyTorchLoadsAMultiProfileCheckpointAndAPostHocEma()
    {
        using var folder = TestPaths.NewTempFolder();
        using var model = new NestedModel(reflection: false);
        using var ema = new EmaManager<NestedModel>(model, new EmaOptions
        {
            Profiles = [new("narrow", EmaSchedule.PowerFunction(0.05)), new("wide", EmaSchedule.PowerFunction(0.10))],
        });
        for (int step = 1; step <= 20; step++)
        {
            UpdateNumericsTests.RandomizeParameters(model);
            ema.Update(model);
            if (step % 10 == 0) PostHocEma.SaveSnapshot(ema, folder["snapshots"]);
        }
        ema.Save(folder["ckpt"]);
        var expected = new System.Text.Json.Nodes.JsonObject
        {
            ["ema._emagen.profiles"] = Value("narrow,wide"),
            ["ema._emagen.step"] = Value(20),
            ["ema._emagen.format"] = Value(EmaCheckpoint.Format),
        };
        foreach (var profile in ema.Profiles)
        {
            var p = "ema." + profile.Name + ".";
            foreach (var name in ema.TrackedNames) expected[p + name] = Tensor(profile[name]);
            expected[p + "_emagen.step"] = Value(20);
            expected[p + "_emagen.decay"] = Value(ema.Decay);
            expected[p + "_emagen.current_decay"] = Value(profile.CurrentDecay);
            expected[p + "_emagen.schedule"] = Value(profile.Schedule.Describe());
            expected[p + "_emagen.format"] = Value(EmaCheckpoint.Format);
        }
        File.WriteAllText(folder["expected.json"], expected.ToJsonString());
        Assert.Contains($"OK {2 * ema.Count} tensor records", PythonTorch.Run("load_with_torch.py", folder["ckpt"], folder["expected.json"]));

        var result = PostHocEma.Synthesize(folder["snapshots"], 0.07, 20, folder["posthoc"]);
        var reader = EmaGen.Dcp.DcpReader.Open(folder["posthoc"]);
        var synthesized = new System.Text.Json.Nodes.JsonObject();
        foreach (var entry in reader.Entries)
        {
            synthesized[entry.Key] = entry is EmaGen.Dcp.DcpTensorEntry ? Tensor(reader.ReadTensor(entry.Key)) : Value(reader.ReadValue(entry.Key));
        }
        Assert.Equal(new PowerFunctionSchedule(result.Gamma).DecayAt(20), (double)reader.ReadValue("ema._emagen.current_decay")!);
        Assert.True(double.IsNaN((double)reader.ReadValue("ema._emagen.decay")!), "a synthesised power-function EMA has no configured constant decay");
        File.WriteAllText(folder["posthoc.json"], synthesized.ToJsonString());
        Assert.Contains($"OK {ema.Count} tensor records", PythonTorch.Run("load_with_torch.py", folder["posthoc"], folder["posthoc.json"]));
    }

    private static System.Text.Json.Nodes.JsonObject Value(object? value) => value is double.NaN ? new() { ["nan"] = true } : new()
    {
        ["value"] = value switch
        {
            string s => s,
            long l => l,
            int i => i,
            double d => d,
            _ => throw new ArgumentException($"unexpected value {value}"),
        },
    };

    private static System.Text.Json.Nodes.JsonObject Tensor(torch.Tensor t) => new()
    {
        ["dtype"] = "float32",
        ["shape"] = new System.Text.Json.Nodes.JsonArray(t.shape.Select(d => (System.Text.Json.Nodes.JsonNode)d).ToArray()),
        ["values"] = new System.Text.Json.Nodes.JsonArray(t.data<float>().ToArray().Select(v => (System.Text.Json.Nodes.JsonNode)(double)v).ToArray()),
    };
}

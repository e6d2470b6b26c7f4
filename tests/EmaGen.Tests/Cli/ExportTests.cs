using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text.Json;
using System.Text.Json.Nodes;
using EmaGen.Cli;
using EmaGen.Dcp;
using EmaGen.Tests.Models;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;

namespace EmaGen.Tests.Cli;

/// <summary><c>emagen export</c> and <see cref="EmaExport"/>: what real PyTorch loads from the files they write.</summary>
public sealed class ExportTests
{
    [Fact]
    public void AShardedBf16ExportOfOneProfileLoadsInPyTorchAsTheCastShadows()
    {
        using var folder = TestPaths.NewTempFolder();
        torch.manual_seed(11);
        using var model = new SizedModel(torch.ScalarType.Float32, 7, 300, 1, 64, 129);
        EmaProfileOptions[] profiles = [new("narrow", EmaSchedule.PowerFunction(0.05)), new("wide", EmaSchedule.PowerFunction(0.10))];
        using var ema = new EmaManager<SizedModel>(model, new EmaOptions { Profiles = profiles });
        for (int step = 0; step < 4; step++)
        {
            Runtime.UpdateNumericsTests.RandomizeParameters(model);
            ema.Update(model);
        }
        ema.Save(folder["ckpt"]);

        // 300 fp32 elements cast to bf16 are 600 bytes: a 700-byte limit gives several shards.
        var (code, stdout, stderr) = Run("export", folder["ckpt"], folder["out"], "--profile", "wide", "--dtype", "bf16",
            "--strip-prefix", "leaves.", "--add-prefix", "model.", "--max-shard-size", "700B");
        Assert.True(code == 0, stderr);
        var files = Directory.GetFiles(folder["out"]).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList();
        Assert.Contains("model.safetensors.index.json", files);
        Assert.True(files.Count(f => f!.StartsWith("model-0000", StringComparison.Ordinal)) >= 2, string.Join(", ", files));
        Assert.DoesNotContain(files, f => f!.StartsWith('.'));   // nothing staged left behind
        Assert.Contains($"{ema.TrackedNames.Count} tensors", stdout);

        var expected = new JsonObject();
        using (var state = new DisposableDictionary(ema.Profile("wide").StateDict()))
        {
            Assert.Equal(ema.TrackedNames.Count, state.Items.Count);
            foreach (var (name, shadow) in state.Items)
            {
                Assert.StartsWith("leaves.", name);
                using var cast = shadow.to_type(torch.ScalarType.BFloat16).to_type(torch.ScalarType.Float64);
                expected["model." + name["leaves.".Length..]] = new JsonObject
                {
                    ["dtype"] = "bfloat16",
                    ["shape"] = new JsonArray(shadow.shape.Select(d => (JsonNode)d).ToArray()),
                    ["values"] = new JsonArray(cast.data<double>().ToArray().Select(v => (JsonNode)v).ToArray()),
                };
            }
        }
        File.WriteAllText(folder["expected.json"], expected.ToJsonString());
        Assert.Contains("OK ", PythonTorch.Run("load_safetensors.py", folder["out"], folder["expected.json"]));
    }

    [Fact]
    public void ExportsFromPyTorchDcpAndSafetensorsKeepValuesAndTheLibraryCallMatchesTheTool()
    {
        using var folder = TestPaths.NewTempFolder();
        // A folder PyTorch 1.13 wrote: every tensor as stored (no cast), one file.
        var (code, stdout, stderr) = Run("export", TestPaths.Fixture("dcp-torch113/single_file"), folder["torch"]);
        Assert.True(code == 0, stderr);
        Assert.Equal(new[] { "model.safetensors" }, Directory.GetFiles(folder["torch"]).Select(Path.GetFileName));
        var source = DcpReader.Open(TestPaths.Fixture("dcp-torch113/single_file"));
        var expected = new JsonObject();
        foreach (var entry in source.Entries.OfType<DcpTensorEntry>())
        {
            using var t = source.ReadTensor(entry.Key);
            using var d = t.to_type(torch.ScalarType.Float64).flatten();
            expected[entry.Key] = new JsonObject
            {
                ["dtype"] = entry.DType,
                ["shape"] = new JsonArray(entry.Size.Select(s => (JsonNode)s).ToArray()),
                ["values"] = new JsonArray((d.numel() == 0 ? [] : d.data<double>().ToArray()).Select(v => (JsonNode)v).ToArray()),
            };
        }
        File.WriteAllText(folder["expected.json"], expected.ToJsonString());
        Assert.Contains("OK ", PythonTorch.Run("load_safetensors.py", folder["torch"], folder["expected.json"]));

        // From that safetensors file again, through the library call: the same bytes.
        var files = EmaExport.ToSafetensors(Path.Combine(folder["torch"], "model.safetensors"), folder["again"]);
        Assert.Equal(File.ReadAllBytes(Path.Combine(folder["torch"], "model.safetensors")), File.ReadAllBytes(Assert.Single(files)));
    }

    [Fact]
    public void BadRequestsAreClearErrorsAndLeaveNothingBehind()
    {
        using var folder = TestPaths.NewTempFolder();
        using var model = new SizedModel(torch.ScalarType.Float32, 4, 4);
        EmaProfileOptions[] profiles = [new("a", EmaSchedule.Constant(0.9)), new("b", EmaSchedule.Constant(0.99))];
        using var ema = new EmaManager<SizedModel>(model, new EmaOptions { Profiles = profiles });
        ema.Update(model);
        ema.Save(folder["ckpt"]);

        var (code, _, stderr) = Run("export", folder["ckpt"], folder["out"]);
        Assert.Equal(1, code);
        Assert.Contains("choose one with --profile", stderr);
        (code, _, stderr) = Run("export", folder["ckpt"], folder["out"], "--profile", "c");
        Assert.Equal(1, code);
        Assert.Contains("no profile 'c'", stderr);
        (code, _, stderr) = Run("export", folder["ckpt"], folder["out"], "--profile", "a", "--dtype", "int8");
        Assert.Equal(1, code);
        Assert.Contains("--dtype 'int8'", stderr);
        Assert.False(Directory.Exists(folder["out"]) && Directory.GetFiles(folder["out"]).Length > 0);

        // A read failure half-way (a data file removed) leaves no file under the final names, nor a staged one.
        foreach (var f in Directory.GetFiles(folder["ckpt"], "*.distcp")) File.Delete(f);
        (code, _, stderr) = Run("export", folder["ckpt"], folder["out2"], "--profile", "a");
        Assert.Equal(1, code);
        Assert.Empty(Directory.Exists(folder["out2"]) ? Directory.GetFiles(folder["out2"]) : []);
    }

    [Fact]
    public async System.Threading.Tasks.Task AShardedManagersCheckpointExportsTheSameFilesAsTheDenseOne()
    {
        using var folder = TestPaths.NewTempFolder();
        torch.manual_seed(12);
        using var model = new SizedModel(torch.ScalarType.Float32, 9, 130, 64);
        using var dense = new EmaManager<SizedModel>(model, 0.9);
        const int world = 3;
        var ranks = Enumerable.Range(0, world).Select(r => new ShardedEmaManager<SizedModel>(model, r, world, new EmaOptions { Decay = 0.9 })).ToList();
        try
        {
            for (int step = 0; step < 3; step++)
            {
                Runtime.UpdateNumericsTests.RandomizeParameters(model);
                dense.Update(model);
                foreach (var rank in ranks) rank.Update(model);
            }
            dense.Save(folder["dense"]);
            await System.Threading.Tasks.Task.WhenAll(ranks.Select(rank => System.Threading.Tasks.Task.Run(
                () => rank.Save(folder["sharded"], "s1", TimeSpan.FromSeconds(30)))));
        }
        finally
        {
            foreach (var rank in ranks) rank.Dispose();
        }
        // Rank 0 exports from the committed folder: its chunks are assembled into whole tensors, bit-equal to the dense export.
        var a = EmaExport.ToSafetensors(folder["dense"], folder["a"], dtype: torch.ScalarType.Float16);
        var b = EmaExport.ToSafetensors(folder["sharded"], folder["b"], dtype: torch.ScalarType.Float16);
        Assert.Equal(File.ReadAllBytes(Assert.Single(a)), File.ReadAllBytes(Assert.Single(b)));
        var (entries, _, _) = SafetensorsFile.ReadHeader(a[0]);
        Assert.Equal(dense.TrackedNames.Order(StringComparer.Ordinal), entries.Select(e => e.Name).Order(StringComparer.Ordinal));
        Assert.All(entries, e => Assert.Equal("F16", e.DType.SafetensorsCode));
    }

    [Theory]
    [InlineData("5GB", 5_000_000_000L)]
    [InlineData("500MB", 500_000_000L)]
    [InlineData("2GiB", 2L << 30)]
    [InlineData("1000", 1000L)]
    public void ShardSizesParseAsHuggingFaceWritesThem(string text, long bytes) => Assert.Equal(bytes, ExportCommand.ParseSize(text));

    private static (int Code, string Stdout, string Stderr) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = CliApp.Run(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }

    private sealed class DisposableDictionary(Dictionary<string, torch.Tensor> items) : IDisposable
    {
        public Dictionary<string, torch.Tensor> Items { get; } = items;

        public void Dispose()
        {
            foreach (var t in Items.Values) t.Dispose();
        }
    }
}

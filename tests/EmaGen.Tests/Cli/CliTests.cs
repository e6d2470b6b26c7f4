using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text.Json;
using EmaGen.Cli;
using EmaGen.Dcp;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;

namespace EmaGen.Tests.Cli;

/// <summary>The emagen verbs on good and bad input, with their exit codes.</summary>
public sealed class CliTests
{
    [Fact]
    public void InspectListsKeysChunksValuesAndTotals()
    {
        using var folder = TestPaths.NewTempFolder();
        WriteSample(folder["ckpt"]);
        var (code, stdout, _) = Run("inspect", folder["ckpt"]);
        Assert.Equal(0, code);
        Assert.Contains("w  float32 (2, 3)  1 chunk(s)", stdout);
        Assert.Contains("offsets (0, 0) sizes (2, 3)  __0_0.distcp bytes", stdout);
        Assert.Contains("step  = 5", stdout);
        Assert.Contains("PyTorch 2.3+", stdout);
        Assert.Contains("totals: 3 keys (2 tensors, 1 values), 10 elements", stdout);

        (code, stdout, _) = Run("inspect", folder["ckpt"], "--json");
        Assert.Equal(0, code);
        using var doc = JsonDocument.Parse(stdout);
        var keys = doc.RootElement.GetProperty("keys").EnumerateArray().ToList();
        Assert.Equal(new[] { "step", "w", "b" }, keys.Select(k => k.GetProperty("key").GetString()));
        Assert.Equal(5, keys[0].GetProperty("value").GetInt64());
        Assert.Equal("bfloat16", keys[2].GetProperty("dtype").GetString());
        Assert.Equal(10, doc.RootElement.GetProperty("totals").GetProperty("elements").GetInt64());
    }

    [Fact]
    public void ConvertRoundTripsThroughSafetensors()
    {
        using var folder = TestPaths.NewTempFolder();
        WriteSample(folder["ckpt"]);
        var (code, stdout, stderr) = Run("convert", folder["ckpt"], folder["model.safetensors"]);
        Assert.True(code == 0, stderr);
        Assert.Contains("2 tensors, 1 values in __metadata__", stdout);
        var (entries, metadata, _) = SafetensorsFile.ReadHeader(folder["model.safetensors"]);
        Assert.Equal("pt", metadata["format"]);
        Assert.Equal("5", metadata["step"]);
        Assert.Equal(new[] { "F32", "BF16" }, entries.Select(e => e.DType.SafetensorsCode));

        (code, _, stderr) = Run("convert", folder["model.safetensors"], folder["back"]);
        Assert.True(code == 0, stderr);
        var reader = DcpReader.Open(folder["back"]);
        Assert.Equal(new float[] { 0, 1, 2, 3, 4, 5 }, reader.ReadTensor("w").data<float>().ToArray());
        Assert.Equal(5L, reader.ReadValue("step"));
    }

    [Fact]
    public void ConvertReportsValuesItCannotRepresent()
    {
        using var folder = TestPaths.NewTempFolder();
        // PyTorch 1.13 wrote "meta" = {"name": "adam", "betas": (0.9, 0.999)}: a tuple has no exact JSON form.
        var (code, stdout, stderr) = Run("convert", TestPaths.Fixture("dcp-torch113/single_file"), folder["f.safetensors"]);
        Assert.True(code == 0, stderr);
        Assert.Contains("skipped 'meta': its value cannot be represented as JSON", stdout);
        var (entries, metadata, _) = SafetensorsFile.ReadHeader(folder["f.safetensors"]);
        Assert.Equal("42", metadata["step"]);
        Assert.Equal("0.001", metadata["lr"]);
        Assert.Contains(entries, e => e.Name == "transposed" && e.Shape.SequenceEqual(new long[] { 3, 2 }));
    }

    [Fact]
    public void VerifyPassesSoundFoldersAndFailsDamagedOnes()
    {
        using var folder = TestPaths.NewTempFolder();
        WriteSample(folder["ckpt"]);
        var (code, stdout, _) = Run("verify", folder["ckpt"]);
        Assert.Equal(0, code);
        Assert.StartsWith("OK:", stdout);

        Assert.Equal(0, Run("verify", TestPaths.Fixture("dcp-torch113/sharded_2rank")).Code);

        var data = Path.Combine(folder["ckpt"], "__0_0.distcp");
        var bytes = File.ReadAllBytes(data);
        bytes[^200] ^= 0x55;
        File.WriteAllBytes(data, bytes);
        (code, stdout, _) = Run("verify", folder["ckpt"]);
        Assert.Equal(1, code);
        Assert.Contains("FAILED", stdout);
    }

    [Theory]
    [InlineData("verify")]
    [InlineData("convert")]
    [InlineData("inspect")]
    public void ADataFileThatIsAFolderIsOneLineAndExitCodeOne(string command)
    {
        using var folder = TestPaths.NewTempFolder();
        WriteSample(folder["ckpt"]);
        var data = Path.Combine(folder["ckpt"], "__0_0.distcp");
        File.Delete(data);
        Directory.CreateDirectory(data);
        var args = command == "convert" ? new[] { command, folder["ckpt"], folder["out.safetensors"] } : new[] { command, folder["ckpt"] };
        var (code, stdout, stderr) = Run(args);
        Assert.Equal(1, code);
        var problem = command == "verify" ? stdout : stderr;
        Assert.Contains("__0_0.distcp", problem);
        Assert.DoesNotContain("Unhandled", stdout + stderr);
        Assert.DoesNotContain("   at ", stdout + stderr);
        if (command != "verify") Assert.Single(stderr.Trim().Split('\n'));
    }

    [Fact]
    public void VerifyFindsChunksThatDoNotTile()
    {
        using var folder = TestPaths.NewTempFolder();
        WriteSample(folder["ckpt"]);
        var metadata = DcpReader.Open(folder["ckpt"]).Metadata;
        var w = (DcpTensorEntry)metadata.Find("w")!;
        metadata.Entries[metadata.Entries.IndexOf(w)] = w.With(size: new long[] { 3, 3 });
        File.WriteAllBytes(Path.Combine(folder["ckpt"], ".metadata"), DcpMetadataWriterProxy.Write(metadata));
        var (code, stdout, _) = Run("verify", folder["ckpt"]);
        Assert.Equal(1, code);
        Assert.Contains("'w': chunks hold 6 elements, the tensor 9", stdout);
    }

    [Fact]
    public void SchedulePrintsDecaysAtTheRequestedSteps()
    {
        var (code, stdout, _) = Run("schedule", "power:0.10", "--steps", "1,1000");
        Assert.Equal(0, code);
        Assert.Contains("sigma_rel 0.1000", stdout);
        Assert.Contains(Math.Pow(1 - 1.0 / 1000, PowerFunctionSchedule.GammaFromSigmaRel(0.10) + 1).ToString("R", System.Globalization.CultureInfo.InvariantCulture), stdout);
        var (bad, _, stderr) = Run("schedule", "nope");
        Assert.Equal(1, bad);
        Assert.Contains("Expected constant:D", stderr);
    }

    [Fact]
    public void ScheduleJsonOfABurnedInBemaPrintsUpdatesDecayAndAlphaFromTheFormulas()
    {
        var (code, json, _) = Run("schedule", "startafter:5:every:3:percall:bema:kappa=0.6,eta=0.4,rho=7,gamma=2,betamin=0.001",
            "--steps", "1,2,5,6,7,8,9,10,11,12,300,100000", "--json");
        Assert.Equal(0, code);
        using var doc = JsonDocument.Parse(json);
        foreach (var row in doc.RootElement.GetProperty("steps").EnumerateArray())
        {
            long step = row.GetProperty("step").GetInt64();
            // The paper's formulas with t counted from the burn-in: copies through step 5, then an update every 3rd t.
            long t = step - 5;
            bool updates = t <= 0 || t % 3 == 0;
            double beta = t <= 0 ? 1.0 : Math.Max(Math.Pow(7 + 2.0 * t, -0.6), 0.001);
            double alpha = t <= 0 ? 0.0 : Math.Pow(7 + 2.0 * t, -0.4);
            Assert.Equal(updates, row.GetProperty("updates").GetBoolean());
            Assert.Equal(1 - beta, row.GetProperty("decay").GetDouble(), 14);
            Assert.Equal(alpha, row.GetProperty("alpha").GetDouble(), 14);
        }
        // Far out β_t falls below β_min, which then holds.
        Assert.Equal(1 - 0.001, doc.RootElement.GetProperty("steps")[11].GetProperty("decay").GetDouble(), 14);

        var (plain, text, _) = Run("schedule", "bema", "--steps", "1,10");
        Assert.Equal(0, plain);
        Assert.Contains("Bema(kappa=0.5, eta=0.2, rho=10, gamma=1, betaMin=0)", text);
        Assert.Contains("alpha", text);
        var (bad, _, badError) = Run("schedule", "bema:kapa=0.5");
        Assert.Equal(1, bad);
        Assert.Contains("'kapa'", badError);
        var (noAlpha, powerJson, _) = Run("schedule", "power:0.1", "--steps", "1", "--json");
        Assert.Equal(0, noAlpha);
        Assert.DoesNotContain("alpha", powerJson);
    }

    [Fact]
    public void ScheduleKindOptionsMatchTheSpecificationAndJsonCarriesTheHalfLife()
    {
        var (_, fromSpec, _) = Run("schedule", "power:0.10", "--steps", "1,10,100,1000");
        var (code, fromKind, _) = Run("schedule", "--kind", "power", "--sigma-rel", "0.1", "--steps", "1,10,100,1000");
        Assert.Equal(0, code);
        Assert.Equal(fromSpec, fromKind);
        Assert.Contains("half-life", fromKind);

        var (jsonCode, json, _) = Run("schedule", "--kind", "constant", "--decay", "0.999", "--every", "10", "--steps", "10,20", "--json");
        Assert.Equal(0, jsonCode);
        using var doc = System.Text.Json.JsonDocument.Parse(json);
        Assert.Equal("UpdateEvery(10, rescaled, Constant(decay=0.999))", doc.RootElement.GetProperty("schedule").GetString());
        var row = doc.RootElement.GetProperty("steps")[1];
        Assert.Equal(20, row.GetProperty("step").GetInt64());
        Assert.Equal(Math.Pow(0.999, 10), row.GetProperty("decay").GetDouble(), 12);
        // Rescaling keeps the per-step horizon: ln 0.5 / ln 0.999 steps, as without --every.
        Assert.Equal(Math.Log(0.5) / Math.Log(0.999), row.GetProperty("half_life_steps").GetDouble(), 6);

        var (warm, warmup, _) = Run("schedule", "--kind", "warmup", "--power", "0.75", "--max", "0.999", "--steps", "1,100000");
        Assert.Equal(0, warm);
        Assert.Contains("Warmup(invGamma=1, power=0.75, minDecay=0, maxDecay=0.999, updateAfterStep=0)", warmup);
        Assert.Contains("0.999 ", warmup);

        Assert.Equal(1, Run("schedule", "--kind", "power").Code);
        Assert.Equal(1, Run("schedule", "power:0.1", "--kind", "power", "--sigma-rel", "0.1").Code);
        var (none, _, noneError) = Run("schedule");
        Assert.Equal(1, none);
        Assert.Contains("--kind", noneError);
        var (halfLifeMissing, _, halfLifeError) = Run("schedule", "--kind", "halflife");
        Assert.Equal(1, halfLifeMissing);
        Assert.Contains("--half-life", halfLifeError);
    }

    [Fact]
    public void PostHocListsSnapshotsAndSynthesisesACheckpoint()
    {
        using var folder = TestPaths.NewTempFolder();
        using var model = new EmaGen.Tests.Models.BareParameters(reflection: false);
        using var ema = new EmaManager<EmaGen.Tests.Models.BareParameters>(model, new EmaOptions
        {
            Profiles = [new("narrow", EmaSchedule.PowerFunction(0.05)), new("wide", EmaSchedule.PowerFunction(0.10))],
        });
        for (int step = 1; step <= 300; step++)
        {
            EmaGen.Tests.Runtime.UpdateNumericsTests.RandomizeParameters(model);
            ema.Update(model);
            if (step % 100 == 0) PostHocEma.SaveSnapshot(ema, folder["snapshots"]);
        }

        var (code, list, _) = Run("posthoc", folder["snapshots"]);
        Assert.Equal(0, code);
        Assert.Contains("6 snapshot profile(s)", list);
        Assert.Contains("narrow", list);

        var (made, synthesis, _) = Run("posthoc", folder["snapshots"], "--sigma-rel", "0.07", "--step", "200", "--out", folder["out"], "--dtype", "bfloat16");
        Assert.Equal(0, made);
        Assert.Contains("4 snapshot profiles, 2 later ones ignored", synthesis);
        var reader = DcpReader.Open(folder["out"]);
        Assert.Equal(200L, reader.ReadValue("ema._emagen.step"));
        Assert.Equal(torch.ScalarType.BFloat16, reader.ReadTensor("ema.alpha").dtype);

        // Several widths in one pass over the snapshots: each equals its own single-width synthesis bit for bit.
        var (many, manyOutput, _) = Run("posthoc", folder["snapshots"], "--sigma-rel", "0.06,0.09", "--step", "300", "--out", folder["many"]);
        Assert.Equal(0, many);
        Assert.Contains(Path.Combine(folder["many"], "sigma-0.09"), manyOutput);
        foreach (var width in new[] { 0.06, 0.09 })
        {
            var single = folder[$"single-{width}"];
            PostHocEma.Synthesize(folder["snapshots"], width, 300, single);
            var a = DcpReader.Open(single);
            var b = DcpReader.Open(Path.Combine(folder["many"], "sigma-" + width.ToString(System.Globalization.CultureInfo.InvariantCulture)));
            foreach (var key in new[] { "ema.alpha", "ema.beta", "ema.gamma" })
            {
                Assert.Equal(a.ReadTensor(key).data<float>().ToArray(), b.ReadTensor(key).data<float>().ToArray());
            }
            Assert.Equal(a.ReadValue("ema._emagen.schedule"), b.ReadValue("ema._emagen.schedule"));
        }

        var (partial, _, partialError) = Run("posthoc", folder["snapshots"], "--sigma-rel", "0.07");
        Assert.Equal(1, partial);
        Assert.Contains("--step", partialError);
    }

    [Fact]
    public void BadInputAndUsageHaveDistinctExitCodes()
    {
        using var folder = TestPaths.NewTempFolder();
        var (code, _, stderr) = Run("inspect", folder["nothing"]);
        Assert.Equal(1, code);
        Assert.Contains("does not exist", stderr);
        Assert.Single(stderr.Trim().Split('\n'));

        Directory.CreateDirectory(folder["empty"]);
        (code, _, stderr) = Run("verify", folder["empty"]);
        Assert.Equal(1, code);
        Assert.Contains("no .metadata", stderr);

        WriteSample(folder["ckpt"]);
        File.WriteAllBytes(Path.Combine(folder["ckpt"], ".metadata"), File.ReadAllBytes(Path.Combine(folder["ckpt"], ".metadata"))[..40]);
        (code, _, stderr) = Run("inspect", folder["ckpt"]);
        Assert.Equal(1, code);
        Assert.Contains(".metadata", stderr);

        Assert.Equal(2, Run("frobnicate").Code);
        Assert.Equal(2, Run("inspect").Code);
        Assert.Equal(1, Run("convert", folder["nothing"], folder["x"]).Code);
    }

    private static void WriteSample(string path) => DcpWriter.Save(path, new List<KeyValuePair<string, object?>>
    {
        new("w", torch.arange(6, dtype: torch.ScalarType.Float32).reshape(2, 3)),
        new("b", torch.ones(4, dtype: torch.ScalarType.BFloat16)),
        new("step", 5L),
    });

    private static (int Code, string Stdout, string Stderr) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = CliApp.Run(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }
}

internal static class DcpMetadataWriterProxy
{
    public static byte[] Write(DcpMetadata metadata) => DcpMetadataWriter.Write(metadata);
}

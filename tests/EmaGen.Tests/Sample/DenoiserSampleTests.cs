using System;
using System.IO;
using System.Linq;
using System.Text.Json;
using EmaGen.Samples.Denoiser;
using Xunit;

namespace EmaGen.Tests.Sample;

/// <summary>The sample's main job in a short configuration: it trains, averages and reports finite quality figures.</summary>
public sealed class DenoiserSampleTests
{
    [Fact]
    public void ShortRunReportsFiniteRawAndEmaQuality()
    {
        var dir = Path.Combine(Path.GetTempPath(), "emagen-sample-" + Guid.NewGuid().ToString("N"));
        var log = new StringWriter();
        try
        {
            var result = Trainer.Run(new TrainOptions { Steps = 40, EvalPoints = 300, LogEvery = 20, Decay = 0.9, OutDir = dir }, log);
            Assert.True(double.IsFinite(result.RawDistance) && result.RawDistance > 0, $"raw {result.RawDistance}");
            Assert.True(double.IsFinite(result.EmaDistance) && result.EmaDistance > 0, $"ema {result.EmaDistance}");
            Assert.True(double.IsFinite(result.FinalLoss));
            Assert.Equal(40, result.Steps);
            Assert.Contains("EMA weights", log.ToString());
            Assert.Contains("shadows match bit for bit", log.ToString());
            var reader = EmaGen.Dcp.DcpReader.Open(Path.Combine(dir, "ema"));
            Assert.Equal(40L, reader.ReadValue("ema._emagen.step"));
            using var summary = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "summary.json")));
            Assert.Equal(result.EmaDistance, summary.RootElement.GetProperty("EmaDistance").GetDouble());
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void TwoPowerFunctionProfilesAndThePostHocEmaAreEachReported()
    {
        var dir = Path.Combine(Path.GetTempPath(), "emagen-sample-" + Guid.NewGuid().ToString("N"));
        var log = new StringWriter();
        try
        {
            var result = Trainer.Run(new TrainOptions
            {
                Steps = 60, EvalPoints = 300, LogEvery = 30, OutDir = dir,
                Profiles = ["sigma050=power:0.05", "sigma100=power:0.10"], PostHocEvery = 20, PostHocSigmaRel = 0.075,
            }, log);
            Assert.Equal(["sigma050", "sigma100", "post-hoc 0.075"], result.Profiles.Select(p => p.Name));
            Assert.All(result.Profiles, p => Assert.True(double.IsFinite(p.Distance) && p.Distance > 0, $"{p.Name}: {p.Distance}"));
            Assert.Equal(result.Profiles[0].Distance, result.EmaDistance);
            Assert.Contains("EMA sigma100", log.ToString());
            Assert.Contains("6 snapshot profiles", log.ToString());
            Assert.Equal(3, Directory.GetDirectories(Path.Combine(dir, "posthoc")).Length);
            var reader = EmaGen.Dcp.DcpReader.Open(Path.Combine(dir, "ema"));
            Assert.Equal("sigma050,sigma100", reader.ReadValue("ema._emagen.profiles"));
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void ALagFreeBemaProfileIsReportedAndItsExportHoldsTheCorrectedWeights()
    {
        var dir = Path.Combine(Path.GetTempPath(), "emagen-sample-" + Guid.NewGuid().ToString("N"));
        var log = new StringWriter();
        try
        {
            var result = Trainer.Run(new TrainOptions
            {
                Steps = 130, EvalPoints = 300, LogEvery = 65, OutDir = dir, Profiles = ["ema=power:0.10", "lagfree=startafter:100:bema"],
            }, log);
            var lagfree = Assert.Single(result.Profiles, p => p.Name == "lagfree");
            Assert.True(double.IsFinite(lagfree.Distance) && lagfree.Distance > 0, $"lagfree: {lagfree.Distance}");
            Assert.Contains("EMA lagfree", log.ToString());

            // What people ship: the export of the BEMA profile holds its usual keys (the corrected weights), no resume key.
            var checkpoint = Path.Combine(dir, "ema");
            var exported = Path.Combine(dir, "export");
            EmaGen.Export.SafetensorsExport.Run(checkpoint, exported, new EmaGen.Export.ExportOptions(Profile: "lagfree"));
            var file = Path.Combine(exported, EmaGen.Export.SafetensorsExport.SingleFile);
            var (tensors, _, dataStart) = EmaGen.Dcp.SafetensorsFile.ReadHeader(file);
            using var model = new DenoiserModel();
            Assert.Equal(model.named_parameters().Select(p => p.name).Order(), tensors.Select(t => t.Name).Order());
            var reader = EmaGen.Dcp.DcpReader.Open(checkpoint);
            foreach (var entry in tensors)
            {
                using var stored = reader.ReadTensor("ema.lagfree." + entry.Name);
                using var host = EmaGen.Dcp.SafetensorsFile.ReadTensor(file, entry, dataStart);
                Assert.Equal(stored.data<float>().ToArray(), host.Span<float>().ToArray());
            }
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        }
    }
}

using System;
using System.IO;
using System.Linq;
using System.Xml.Linq;
using EmaGen.Samples.TinyGpt;
using Xunit;

namespace EmaGen.Tests.Sample;

/// <summary>The TinyGpt sample's <c>--nan-spike</c>: raw weights broken by a real overflowing step, the EMA intact, training recovered from it.</summary>
public sealed class TinyGptSampleTests
{
    [Fact]
    public void NanSpikeBreaksTheRawWeightsButNotTheEmaAndTrainingRecoversFromIt()
    {
        var dir = Path.Combine(Path.GetTempPath(), "emagen-tinygpt-" + Guid.NewGuid().ToString("N"));
        var log = new StringWriter();
        try
        {
            var options = new TrainOptions { Steps = 60, NanSpike = 30, EvalEvery = 10, ValidationBatches = 4, OutDir = dir };
            var result = Trainer.Run(options, () => new GptModel(SyntheticLanguage.Vocabulary, options.Context), log);
            var text = log.ToString();
            Assert.Equal([10, 20, 30, 40, 50, 60], result.Curve.Select(p => p.Step));
            var spike = result.Curve.Single(p => p.Step == 30);
            // The spike is real: AdamW wrote NaN into the raw weights, so their loss is NaN at that step.
            Assert.True(double.IsNaN(spike.Raw), $"raw at the spike {spike.Raw}");
            Assert.Matches(@"raw weights broken: [1-9]\d* of \d+ tensors hold NaN/Inf", text);
            // The EMA figure stays finite throughout, and training carried on from it: raw finite again after the spike.
            Assert.All(result.Curve, p => Assert.True(double.IsFinite(p.Ema), $"EMA at step {p.Step}: {p.Ema}"));
            Assert.All(result.Curve.Where(p => p.Step > 30), p => Assert.True(double.IsFinite(p.Raw), $"raw at step {p.Step}: {p.Raw}"));
            Assert.True(double.IsFinite(result.Raw) && double.IsFinite(result.Ema));
            Assert.Matches(@"EMA step report: step 30; decay [0-9.]+; non-finite [1-9]\d* in tokens\.weight", text);
            Assert.Contains("OnFirstNonFinite: the EMA kept its weights through step 30", text);
            Assert.Matches(@"EMA weights intact: (\d+) of \1 shadows finite", text);
            Assert.Contains("raw weights broken now: 0 of", text);

            var svg = XDocument.Load(Path.Combine(dir, "loss.svg"));
            XNamespace ns = "http://www.w3.org/2000/svg";
            string[] Classes(string element) => svg.Descendants(ns + element).Select(e => (string?)e.Attribute("class") ?? "").ToArray();
            // The raw line breaks at the spike (two runs around a NaN marker); the EMA line is one run.
            Assert.Equal(2, Classes("polyline").Count(c => c == "raw"));
            Assert.Equal(1, Classes("polyline").Count(c => c == "ema"));
            Assert.Contains("raw-nonfinite", Classes("path"));
            Assert.DoesNotContain("ema-nonfinite", Classes("path"));
            Assert.Contains("spike", Classes("line"));
            Assert.Equal(6, svg.Descendants(ns + "polyline").Where(e => (string?)e.Attribute("class") == "ema").Single().Attribute("points")!.Value.Split(' ').Length);
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void ABemaProfileIsEvaluatedWithItsCorrectedWeightsAndTheCheckpointReloads()
    {
        var dir = Path.Combine(Path.GetTempPath(), "emagen-tinygpt-" + Guid.NewGuid().ToString("N"));
        var log = new StringWriter();
        try
        {
            var options = new TrainOptions { Steps = 40, ValidationBatches = 2, OutDir = dir, Profiles = ["lagfree=startafter:10:bema"] };
            var result = Trainer.Run(options, () => new GptModel(SyntheticLanguage.Vocabulary, options.Context), log);
            var text = log.ToString();
            var (name, loss) = Assert.Single(result.ProfileLosses);
            Assert.Equal("lagfree", name);
            Assert.True(double.IsFinite(loss));
            // Its own figure, not the main EMA's or the raw weights'.
            Assert.NotEqual(result.Ema, loss);
            Assert.NotEqual(result.Raw, loss);
            Assert.Contains("lagfree        ", text);
            Assert.Matches(@"reloaded the checkpoint: (\d+) of \1 shadows match bit for bit", text);
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        }
        Assert.Throws<ArgumentException>(() => Trainer.ParseProfile("lagfree"));
    }

    [Fact]
    public void SwitchEveryMovesTheModelToItsEmaAtThoseSteps()
    {
        var log = new StringWriter();
        var options = new TrainOptions { Steps = 30, ValidationBatches = 1, SwitchEvery = 10 };
        var result = Trainer.Run(options, () => new GptModel(SyntheticLanguage.Vocabulary, options.Context), log);
        var switches = log.ToString().Split('\n').Where(l => l.Contains("Switch EMA:", StringComparison.Ordinal)).Select(l => l.Trim()).ToList();
        Assert.Equal(new[] { 10, 20, 30 }.Select(s => $"step {s,5}  Switch EMA: the model moved to its EMA (blend 1)"), switches);
        // The last step switched with blend 1: the raw weights are the EMA's, so both evaluate alike.
        Assert.Equal(result.Ema, result.Raw);
    }
}

using System;
using System.IO;
using System.Linq;
using System.Text.RegularExpressions;
using EmaGen.Samples.TinyGpt;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;

namespace EmaGen.Tests.Aot;

/// <summary>
/// The LLM sample published with NativeAOT: for both architectures (own GPT blocks with MultiheadAttention and a
/// Sequential MLP; TorchSharp's TransformerEncoder) the binary lists the same named_parameters() as the JIT build,
/// trains to the same losses on one thread, and writes a checkpoint that reloads bit for bit; with tied embeddings the
/// EMA's keys are the binary's own named_parameters() (the tied weight once).
/// </summary>
[Collection(RepositoryBuilds.Name)]
public sealed class TinyGptAotTests
{
    [Fact]
    public void PublishedTinyGptMatchesTheJitBuild()
    {
        using var folder = TestPaths.NewTempFolder();
        var repo = Path.GetFullPath(Path.Combine(TestPaths.TestsRoot(), "..", ".."));
        var publish = ProcessRunner.Run("dotnet", repo, 600_000, "publish", Path.Combine(repo, "samples", "TinyGpt"), "-c", "Release", "-r", "linux-x64",
            "-p:PublishAot=true", "-o", folder["aot"], "--nologo");
        Assert.True(publish.ExitCode == 0, "publish failed:\n" + publish.Output);
        var ours = publish.Output.Split('\n').Where(l => Regex.IsMatch(l, @"warning IL\d{4}") && !l.Contains("TorchSharp", StringComparison.Ordinal)).Distinct().ToList();
        Assert.True(ours.Count == 0, "trim/AOT warnings outside TorchSharp:\n" + string.Join("\n", ours));

        foreach (var arch in new[] { "gpt", "encoder" })
        {
            var run = ProcessRunner.Run(Path.Combine(folder["aot"], "TinyGpt"), folder.Path, 600_000,
                "--arch", arch, "--steps", "25", "--threads", "1", "--list-parameters", "--out", folder["run-" + arch]);
            Assert.True(run.ExitCode == 0, $"the AOT binary failed ({arch}):\n" + run.Output);

            var jit = RunJit(new TrainOptions { Architecture = arch, Steps = 25, Threads = 1, ListParameters = true });
            var expected = Lines(jit.ToString(), "parameter ");
            Assert.True(expected.Count > 20, $"{arch}: only {expected.Count} parameters listed");
            Assert.Equal(expected, Lines(run.Output, "parameter "));
            Assert.Contains(arch == "gpt" ? "parameter blocks.1.mlp.proj.weight [64, 256]" : "parameter encoder.layers.1.self_attn.in_proj_weight [192, 64]", expected);
            // The same losses, bit for bit: LibTorch computes the training, and EmaGen's kernels compute one formula
            // whatever the vector width the binary was compiled for.
            Assert.Equal(Exact(jit.ToString()), Exact(run.Output));
            Assert.Contains($"reloaded the checkpoint: {expected.Count} of {expected.Count} shadows match bit for bit", run.Output);
        }

        // Tied embeddings (tokens.weight = head.weight, GPT-2 style): under NativeAOT too the EMA's keys are the model's
        // named_parameters(), the tied weight once, under its first name, with one shadow.
        var tied = ProcessRunner.Run(Path.Combine(folder["aot"], "TinyGpt"), folder.Path, 600_000,
            "--arch", "gpt", "--steps", "5", "--threads", "1", "--list-parameters", "--tie-embeddings", "--out", folder["run-tied"]);
        Assert.True(tied.ExitCode == 0, "the AOT binary failed (tied):\n" + tied.Output);
        using var jitTied = new GptModel(SyntheticLanguage.Vocabulary, new TrainOptions().Context, tieEmbeddings: true);
        var named = jitTied.named_parameters().Select(p => p.name).ToList();
        Assert.Contains("tokens.weight", named);
        Assert.DoesNotContain("head.weight", named);
        Assert.Equal(named, Lines(tied.Output, "named ").Select(l => l["named ".Length..]));
        Assert.Equal(named, Lines(tied.Output, "parameter ").Select(l => l.Split(' ')[1]));
        Assert.Contains($"EMA shadows: {named.Count} tensors", tied.Output);
        Assert.Contains("tied aliases: head.weight -> tokens.weight", tied.Output);
        Assert.Contains($"reloaded the checkpoint: {named.Count} of {named.Count} shadows match bit for bit", tied.Output);

        // A NaN spike: the binary's kernels (128-bit vectors on baseline x64) take the guard's element path for every
        // block the spike broke and keep the JIT's bits (256-bit vectors here).
        var spike = ProcessRunner.Run(Path.Combine(folder["aot"], "TinyGpt"), folder.Path, 600_000,
            "--arch", "gpt", "--steps", "12", "--nan-spike", "6", "--threads", "1", "--out", folder["run-spike"]);
        Assert.True(spike.ExitCode == 0, "the AOT binary failed (spike):\n" + spike.Output);
        var jitSpike = RunJit(new TrainOptions { Architecture = "gpt", Steps = 12, NanSpike = 6, Threads = 1 });
        Assert.Contains("EMA weights intact", spike.Output);
        Assert.Equal(Lines(jitSpike.ToString(), "EMA step report:"), Lines(spike.Output, "EMA step report:"));
        Assert.Equal(Exact(jitSpike.ToString()), Exact(spike.Output));
    }

    // The same training in this process (the JIT build); the trainer sets LibTorch's thread count, restored after.
    private static StringWriter RunJit(TrainOptions options)
    {
        var log = new StringWriter();
        int threads = torch.get_num_threads();
        try
        {
            if (options.Architecture == "gpt") Trainer.Run(options, () => new GptModel(SyntheticLanguage.Vocabulary, options.Context), log);
            else Trainer.Run(options, () => new EncoderGptModel(SyntheticLanguage.Vocabulary, options.Context), log);
        }
        finally
        {
            torch.set_num_threads(threads);
        }
        return log;
    }

    private static System.Collections.Generic.List<string> Lines(string output, string prefix) =>
        output.Split('\n').Select(l => l.Trim()).Where(l => l.StartsWith(prefix, StringComparison.Ordinal)).ToList();

    private static (double Raw, double Ema) Exact(string output)
    {
        var match = Regex.Match(output, @"exact raw=(\S+) ema=(\S+)");
        Assert.True(match.Success, "no 'exact' line in:\n" + output);
        return (double.Parse(match.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture),
            double.Parse(match.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture));
    }
}

using System;
using System.IO;
using System.Linq;
using System.Text.RegularExpressions;
using EmaGen.Dcp;
using EmaGen.Samples.Denoiser;
using EmaGen.Tests.Support;
using Xunit;

namespace EmaGen.Tests.Aot;

/// <summary>
/// Publishes the sample with NativeAOT and runs it: the binary must see the same named_parameters() as the JIT build
/// (TorchSharp's reflection-based registration finds nothing under AOT; the generated one must), its optimizer must
/// move every weight, its checkpoint must reload, and the publish must show no trim/AOT warning from our code.
/// </summary>
[Collection(RepositoryBuilds.Name)]
public sealed class NativeAotTests
{
    [Fact]
    public void PublishedSampleTrainsWithTheSameParametersAsTheJitBuild()
    {
        using var folder = TestPaths.NewTempFolder();
        var repo = Path.GetFullPath(Path.Combine(TestPaths.TestsRoot(), "..", ".."));
        var publish = Run("dotnet", repo, "publish", Path.Combine(repo, "samples", "Denoiser"), "-c", "Release", "-r", "linux-x64",
            "-p:PublishAot=true", "-o", folder["aot"], "--nologo");
        Assert.True(publish.ExitCode == 0, "publish failed:\n" + publish.Output);

        var warnings = publish.Output.Split('\n').Where(l => Regex.IsMatch(l, @"warning IL\d{4}")).Distinct().ToList();
        var ours = warnings.Where(l => !l.Contains("TorchSharp", StringComparison.Ordinal)).ToList();
        Assert.True(ours.Count == 0, "trim/AOT warnings outside TorchSharp:\n" + string.Join("\n", ours));

        var run = Run(Path.Combine(folder["aot"], "Denoiser"), folder.Path, "--steps", "30", "--list-parameters", "--out", folder["run"]);
        Assert.True(run.ExitCode == 0, "the AOT binary failed:\n" + run.Output);

        using var jit = new DenoiserModel();
        var expected = jit.named_parameters().Select(p => $"parameter {p.name} [{string.Join(", ", p.parameter.shape)}]").ToList();
        var actual = run.Output.Split('\n').Select(l => l.Trim()).Where(l => l.StartsWith("parameter ", StringComparison.Ordinal)).ToList();
        Assert.Equal(expected, actual);
        Assert.Contains($"optimizer changed {expected.Count} of {expected.Count} parameter tensors", run.Output);
        Assert.Contains("shadows match bit for bit", run.Output);

        var reader = DcpReader.Open(Path.Combine(folder["run"], "ema"));
        Assert.Equal(expected.Count, reader.Entries.Count(e => e is DcpTensorEntry));

        // Two fused profiles, post-hoc snapshots and synthesis (LAPACK solve, deferred fp16 conversion) under NativeAOT.
        var profiles = Run(Path.Combine(folder["aot"], "Denoiser"), folder.Path, "--steps", "30", "--out", folder["profiles"],
            "--profile", "narrow=power:0.05", "--profile", "wide=power:0.10", "--posthoc-every", "10");
        Assert.True(profiles.ExitCode == 0, "the AOT binary failed with profiles:\n" + profiles.Output);
        Assert.Contains("EMA wide", profiles.Output);
        Assert.Contains("6 snapshot profiles", profiles.Output);
        Assert.Contains($"reloaded the checkpoint: {2 * expected.Count} shadows match bit for bit", profiles.Output);
    }

    private static (int ExitCode, string Output) Run(string file, string directory, params string[] arguments) =>
        ProcessRunner.Run(file, directory, 600_000, arguments);
}

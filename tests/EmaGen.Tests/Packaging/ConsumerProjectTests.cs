using System;
using System.Diagnostics;
using System.IO;
using System.IO.Compression;
using System.Linq;
using EmaGen.Tests.Support;
using Xunit;
using Xunit.Abstractions;

namespace EmaGen.Tests.Packaging;

/// <summary>
/// The design card's user, end to end: `dotnet pack` of this repository into a folder feed, then, in a folder outside
/// the repository with its own NuGet.Config, `dotnet new emagen-trainer` from the template package, build and run the
/// trainer, publish it with NativeAOT and run the binary, install the emagen tool from the feed and verify the
/// trainer's checkpoint; plus the EMA100 warning for an executable without a LibTorch backend.
/// </summary>
[Collection(RepositoryBuilds.Name)]
public sealed class ConsumerProjectTests
{
    private readonly ITestOutputHelper _output;

    public ConsumerProjectTests(ITestOutputHelper output) => _output = output;

    [Fact]
    public void APackagedTrainerBuildsRunsPublishesNativeAndItsCheckpointVerifies()
    {
        var repo = Path.GetFullPath(Path.Combine(TestPaths.TestsRoot(), "..", ".."));
        // A version of its own, so no package of an earlier run in the NuGet cache stands in for this build's.
        var suffix = PackagingSteps.Suffix("ci");
        var version = "0.1.0-" + suffix;
        using var folder = TestPaths.NewTempFolder();
        Assert.False(folder.Path.StartsWith(repo, StringComparison.Ordinal));
        var feed = folder["feed"];
        var clock = Stopwatch.StartNew();
        try
        {
            Step("pack", "dotnet", repo, "pack", Path.Combine(repo, "EmaGen.sln"), "-c", "Release", "-o", feed, $"-p:VersionSuffix={suffix}", "--nologo");
            Assert.Equal(
                new[]
                {
                    $"EmaGen.{version}.nupkg", $"EmaGen.{version}.snupkg", $"EmaGen.Checkpoints.{version}.nupkg", $"EmaGen.Checkpoints.{version}.snupkg",
                    $"EmaGen.Templates.{version}.nupkg", $"EmaGen.Tool.{version}.nupkg",
                },
                Directory.GetFiles(feed).Select(Path.GetFileName).Order(StringComparer.Ordinal));
            CheckLibraryPackage(Path.Combine(feed, $"EmaGen.{version}.nupkg"));

            var consumer = folder["consumer"];
            PackagingSteps.WriteNuGetConfig(consumer, feed, "https://api.nuget.org/v3/index.json");
            var hive = folder["template-hive"];
            Step("template install", "dotnet", consumer, "new", "install", Path.Combine(feed, $"EmaGen.Templates.{version}.nupkg"), "--debug:custom-hive", hive);
            Step("dotnet new", "dotnet", consumer, "new", "emagen-trainer", "-n", "MyTrainer", "--debug:custom-hive", hive);
            var project = Path.Combine(consumer, "MyTrainer");
            var csproj = File.ReadAllText(Path.Combine(project, "MyTrainer.csproj"));
            Assert.Contains($"Include=\"EmaGen\" Version=\"{version}\"", csproj);
            Assert.Contains("Include=\"libtorch-cpu-linux-x64\"", csproj);
            Assert.DoesNotContain("cuda", csproj, StringComparison.OrdinalIgnoreCase);
            // --cuda switches the backend (TorchSharp-cuda-linux is not served here, so this one is not built).
            Step("dotnet new --cuda", "dotnet", consumer, "new", "emagen-trainer", "-n", "CudaTrainer", "--cuda", "--debug:custom-hive", hive);
            var cuda = File.ReadAllText(Path.Combine(consumer, "CudaTrainer", "CudaTrainer.csproj"));
            Assert.Contains("Include=\"TorchSharp-cuda-linux\"", cuda);
            Assert.DoesNotContain("libtorch-cpu", cuda);

            var build = Step("build", "dotnet", project, "build", "--nologo");
            Assert.DoesNotContain("EMA100", build);
            var run = Step("run", "dotnet", project, "run", "--no-build", "--", "1200");
            var (raw, ema) = Losses(run);
            Assert.True(ema < raw, $"EMA {ema} should beat raw {raw}");
            var checkpoint = Path.Combine(project, "checkpoints", "ema");
            Assert.True(File.Exists(Path.Combine(checkpoint, ".metadata")));

            Step("publish NativeAOT", "dotnet", project, "publish", "-c", "Release", "-p:PublishAot=true", "-o", folder["aot"], "--nologo");
            var native = Step("native run", Path.Combine(folder["aot"], "MyTrainer"), folder.Path, "600", folder["aot-ckpt"]);
            Assert.True(Losses(native).Ema < Losses(native).Raw);

            var tools = folder["tools"];
            Step("tool install", "dotnet", consumer, "tool", "install", "EmaGen.Tool", "--version", version, "--tool-path", tools, "--add-source", feed);
            Assert.Contains("OK: ", Step("emagen verify", Path.Combine(tools, "emagen"), consumer, "verify", checkpoint));
            Assert.Contains("OK: ", Step("emagen verify (AOT run)", Path.Combine(tools, "emagen"), consumer, "verify", folder["aot-ckpt"]));
            _output.WriteLine($"tool install: {DirectoryBytes(tools) / 1e6:F0} MB in {tools}");

            // An executable with EmaGen but no LibTorch backend is told so at build time.
            var bare = Path.Combine(consumer, "NoBackend");
            Directory.CreateDirectory(bare);
            File.WriteAllText(Path.Combine(bare, "NoBackend.csproj"), $"""
                <Project Sdk="Microsoft.NET.Sdk">
                  <PropertyGroup><OutputType>Exe</OutputType><TargetFramework>net10.0</TargetFramework></PropertyGroup>
                  <ItemGroup><PackageReference Include="EmaGen" Version="{version}" /></ItemGroup>
                </Project>
                """);
            File.WriteAllText(Path.Combine(bare, "Program.cs"), "System.Console.WriteLine(typeof(EmaGen.EmaOptions));");
            Assert.Contains("warning EMA100", Step("build without backend", "dotnet", bare, "build", "--nologo"));
            _output.WriteLine($"consumer test: {clock.Elapsed.TotalSeconds:F0} s");
        }
        finally
        {
            PackagingSteps.CleanCache(version, "emagen", "emagen.checkpoints", "emagen.tool", "emagen.templates");
        }
    }

    private static void CheckLibraryPackage(string nupkg)
    {
        using var zip = ZipFile.OpenRead(nupkg);
        var entries = zip.Entries.Select(e => e.FullName).ToHashSet();
        foreach (var expected in new[]
                 {
                     "lib/net10.0/EmaGen.dll", "lib/net10.0/EmaGen.xml", "analyzers/dotnet/cs/EmaGen.Generator.dll",
                     "buildTransitive/EmaGen.targets", "buildTransitive/TorchSharpNativeFix.targets", "buildTransitive/WeakenElfVersionNeed.cs",
                     "README.md", "LICENSE",
                 })
        {
            Assert.Contains(expected, entries);
        }
        using var nuspec = new StreamReader(zip.Entries.Single(e => e.FullName.EndsWith(".nuspec", StringComparison.Ordinal)).Open());
        var text = nuspec.ReadToEnd();
        Assert.Contains("<dependency id=\"TorchSharp\"", text);
        // The formats come from their own managed package, the one the emagen tool is built on.
        Assert.Contains("<dependency id=\"EmaGen.Checkpoints\"", text);
        // A library leaves the LibTorch backend to the application: no libtorch-*, TorchSharp-cpu or TorchSharp-cuda-* dependency.
        Assert.DoesNotContain("<dependency id=\"libtorch", text, StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain("<dependency id=\"TorchSharp-", text, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("<license type=\"expression\">MIT</license>", text);
    }

    private static (double Raw, double Ema) Losses(string output)
    {
        static double After(string text, string label)
        {
            var line = text.Split('\n').First(l => l.Contains(label, StringComparison.Ordinal));
            return double.Parse(line[(line.IndexOf("loss", StringComparison.Ordinal) + 4)..].Trim(), System.Globalization.CultureInfo.InvariantCulture);
        }
        return (After(output, "raw weights"), After(output, "EMA weights"));
    }

    private string Step(string name, string file, string directory, params string[] arguments) =>
        PackagingSteps.Step(_output, name, file, directory, arguments);

    private static long DirectoryBytes(string path) => new DirectoryInfo(path).EnumerateFiles("*", SearchOption.AllDirectories).Sum(f => f.Length);
}

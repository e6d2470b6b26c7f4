using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.IO.Compression;
using System.Linq;
using System.Reflection.Metadata;
using System.Reflection.Metadata.Ecma335;
using System.Reflection.PortableExecutable;
using EmaGen.Cli;
using EmaGen.Dcp;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;

namespace EmaGen.Tests.Packaging;

/// <summary>
/// The emagen tool as users get it: one small RID-independent package of managed assemblies (none referencing
/// TorchSharp, no native library), installed with <c>dotnet tool install</c> into a fresh folder from a local feed
/// only, running every command on checkpoints PyTorch and EmaGen wrote, with the output the in-process tool gives.
/// </summary>
public sealed class ToolPackageTests
{
    private const long MaxPackageBytes = 5_000_000;
    private readonly ITestOutputHelper _output;

    public ToolPackageTests(ITestOutputHelper output) => _output = output;

    [Fact]
    public void TheToolPackageIsSmallManagedOnlyAndRunsFromACleanInstall()
    {
        var repo = Path.GetFullPath(Path.Combine(TestPaths.TestsRoot(), "..", ".."));
        var suffix = PackagingSteps.Suffix("tool");
        var version = "0.1.0-" + suffix;
        using var folder = TestPaths.NewTempFolder();
        var feed = folder["feed"];
        try
        {
            Step("pack", "dotnet", repo, "pack", Path.Combine(repo, "src", "Cli", "EmaGen.Cli.csproj"), "-c", "Release", "-o", feed,
                $"-p:VersionSuffix={suffix}", "--nologo");
            var nupkg = Path.Combine(feed, $"EmaGen.Tool.{version}.nupkg");
            Assert.Equal(new[] { Path.GetFileName(nupkg) }, Directory.GetFiles(feed).Select(Path.GetFileName));
            long size = new FileInfo(nupkg).Length;
            _output.WriteLine($"EmaGen.Tool package: {size:N0} bytes");
            Assert.True(size <= MaxPackageBytes, $"{size:N0} bytes");
            CheckManagedOnly(nupkg);

            var consumer = folder["consumer"];
            PackagingSteps.WriteNuGetConfig(consumer, feed);
            var tools = folder["tools"];
            Step("tool install", "dotnet", consumer, "tool", "install", "EmaGen.Tool", "--version", version, "--tool-path", tools);
            Assert.False(Directory.Exists(Path.Combine(tools, ".store", "emagen.tool", version, "emagen.tool", version, "runtimes")));
            var emagen = Path.Combine(tools, OperatingSystem.IsWindows() ? "emagen.exe" : "emagen");

            // Checkpoints PyTorch wrote (1.13) and EmaGen wrote (a multi-profile manager, and post-hoc snapshots).
            var torch113 = TestPaths.Fixture("dcp-torch113/single_file");
            WriteEmaGenCheckpoint(folder["emagen"], folder["snapshots"]);
            foreach (var args in new[]
                     {
                         new[] { "inspect", torch113 }, ["inspect", folder["emagen"], "--json"], ["verify", torch113], ["verify", folder["emagen"]],
                         ["schedule", "power:0.1", "--steps", "1,10,1000"], ["posthoc", folder["snapshots"]],
                     })
            {
                var (code, expected, _) = InProcess(args);
                Assert.Equal(0, code);
                Assert.Equal(expected, Step("emagen " + args[0], emagen, consumer, args));
            }
            Assert.Contains("wrote ", Step("emagen convert", emagen, consumer, "convert", torch113, folder["t.safetensors"]));
            Assert.Contains("wrote ", Step("emagen convert back", emagen, consumer, "convert", folder["t.safetensors"], folder["t-dcp"]));
            Assert.Contains("OK: ", Step("emagen verify converted", emagen, consumer, "verify", folder["t-dcp"]));
            Assert.Contains("PowerFunction", Step("emagen posthoc synthesis", emagen, consumer, "posthoc", folder["snapshots"],
                "--sigma-rel", "0.08", "--step", "20", "--out", folder["synth"], "--dtype", "bfloat16"));
            Assert.Contains("OK: ", Step("emagen verify synthesis", emagen, consumer, "verify", folder["synth"]));
            Assert.Contains("model.safetensors", Step("emagen export", emagen, consumer, "export", folder["emagen"], folder["hf"],
                "--profile", "wide", "--dtype", "fp16"));
            Assert.Contains("model.safetensors", Step("emagen export (PyTorch DCP)", emagen, consumer, "export", torch113, folder["hf-torch"]));
            _output.WriteLine($"tool install: {new DirectoryInfo(tools).EnumerateFiles("*", SearchOption.AllDirectories).Sum(f => f.Length) / 1e6:F1} MB");
        }
        finally
        {
            PackagingSteps.CleanCache(version, "emagen.tool");
        }
    }

    // Every file of the tool is a managed assembly or data: no runtimes/ folder, no native library, no TorchSharp reference.
    private static void CheckManagedOnly(string nupkg)
    {
        using var zip = ZipFile.OpenRead(nupkg);
        Assert.DoesNotContain(zip.Entries, e => e.FullName.StartsWith("runtimes/", StringComparison.OrdinalIgnoreCase) || e.FullName.Contains("/runtimes/", StringComparison.OrdinalIgnoreCase));
        Assert.Contains(zip.Entries, e => e.FullName == "tools/net10.0/any/EmaGen.Cli.dll");
        var assemblies = 0;
        foreach (var entry in zip.Entries.Where(e => e.FullName.StartsWith("tools/", StringComparison.Ordinal)))
        {
            var extension = Path.GetExtension(entry.FullName).ToLowerInvariant();
            Assert.True(extension is ".dll" or ".json" or ".pdb" or ".xml", $"{entry.FullName} is not a managed assembly or data file");
            Assert.DoesNotContain("torch", entry.FullName, StringComparison.OrdinalIgnoreCase);
            if (extension != ".dll") continue;
            var bytes = new MemoryStream();
            using (var stream = entry.Open()) stream.CopyTo(bytes);
            bytes.Position = 0;
            using var pe = new PEReader(bytes);
            Assert.True(pe.HasMetadata, $"{entry.FullName} is a native library");
            var metadata = pe.GetMetadataReader();
            foreach (var handle in metadata.AssemblyReferences)
            {
                var name = metadata.GetString(metadata.GetAssemblyReference(handle).Name);
                Assert.False(name.StartsWith("TorchSharp", StringComparison.OrdinalIgnoreCase), $"{entry.FullName} references {name}");
            }
            // No P/Invoke into LibTorch (or any library the package would have to bring).
            for (int row = 1; row <= metadata.GetTableRowCount(TableIndex.ModuleRef); row++)
            {
                var module = metadata.GetString(metadata.GetModuleReference(MetadataTokens.ModuleReferenceHandle(row)).Name);
                Assert.DoesNotContain("torch", module, StringComparison.OrdinalIgnoreCase);
            }
            assemblies++;
        }
        Assert.True(assemblies >= 3, $"{assemblies} assemblies");
    }

    private static void WriteEmaGenCheckpoint(string checkpoint, string snapshots)
    {
        torch.manual_seed(3);
        using var model = new Models.SizedModel(torch.ScalarType.Float32, 5, 33);
        EmaProfileOptions[] profiles = [new("narrow", EmaSchedule.PowerFunction(0.05)), new("wide", EmaSchedule.PowerFunction(0.10))];
        using var ema = new EmaManager<Models.SizedModel>(model, new EmaOptions { Profiles = profiles });
        for (int step = 1; step <= 20; step++)
        {
            Runtime.UpdateNumericsTests.RandomizeParameters(model);
            ema.Update(model);
            if (step % 10 == 0) PostHocEma.SaveSnapshot(ema, snapshots);
        }
        ema.Save(checkpoint);
    }

    private static (int Code, string Stdout, string Stderr) InProcess(string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = CliApp.Run(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }

    private string Step(string name, string file, string directory, params string[] arguments) =>
        PackagingSteps.Step(_output, name, file, directory, arguments);
}

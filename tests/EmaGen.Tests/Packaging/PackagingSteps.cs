using System;
using System.Diagnostics;
using System.IO;
using EmaGen.Tests.Support;
using Xunit;
using Xunit.Abstractions;

namespace EmaGen.Tests.Packaging;

/// <summary>What the packaging tests share: a version of this run's own, a consumer folder fed only from a local feed, timed steps, and the NuGet cache cleaned of this run's packages.</summary>
internal static class PackagingSteps
{
    /// <summary>A version suffix of its own, so no package of an earlier run in the NuGet cache stands in for this build's.</summary>
    public static string Suffix(string kind) => kind + "." + DateTime.UtcNow.ToString("yyyyMMddHHmmss") + "." + Environment.ProcessId;

    /// <summary>A NuGet.Config in <paramref name="consumer"/> whose sources are <paramref name="feed"/> (and, when given, one more).</summary>
    public static void WriteNuGetConfig(string consumer, string feed, string? extraSource = null)
    {
        Directory.CreateDirectory(consumer);
        var extra = extraSource is null ? "" : $"""<add key="nuget.org" value="{extraSource}" protocolVersion="3" />""";
        File.WriteAllText(Path.Combine(consumer, "NuGet.Config"), $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources>
                <clear />
                <add key="local" value="{feed}" />
                {extra}
              </packageSources>
            </configuration>
            """);
    }

    /// <summary>Runs one step, logs its time, and fails the test with its output when it fails.</summary>
    public static string Step(ITestOutputHelper output, string name, string file, string directory, params string[] arguments)
    {
        var clock = Stopwatch.StartNew();
        var (code, text) = ProcessRunner.Run(file, directory, 900_000, arguments);
        output.WriteLine($"{name}: exit {code}, {clock.Elapsed.TotalSeconds:F1} s");
        Assert.True(code == 0, $"{name} failed (exit {code}):\n{text}");
        return text;
    }

    /// <summary>Removes this run's packages (their version is unique to it) from the NuGet cache.</summary>
    public static void CleanCache(string version, params string[] ids)
    {
        var cache = Environment.GetEnvironmentVariable("NUGET_PACKAGES")
            ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        foreach (var id in ids)
        {
            var cached = Path.Combine(cache, id, version);
            if (Directory.Exists(cached)) Directory.Delete(cached, recursive: true);
        }
    }
}

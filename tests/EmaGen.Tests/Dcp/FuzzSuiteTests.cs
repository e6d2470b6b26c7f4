using System;
using System.IO;
using System.Linq;
using System.Text.Json;
using EmaGen.Tests.Support;
using Xunit;
using Xunit.Abstractions;

namespace EmaGen.Tests.Dcp;

/// <summary>
/// CI's slice of the checkpoint fuzz suite (tests/Fuzz), run as a child process like a user would run it: mutated
/// checkpoints, SIGKILLs during saves, and the memory-amplification inputs. Each must end with nothing in a bad class.
/// </summary>
public sealed class FuzzSuiteTests
{
    private static readonly string Fuzz = Path.Combine(AppContext.BaseDirectory, "EmaGen.Fuzz.dll");
    private readonly ITestOutputHelper _output;

    public FuzzSuiteTests(ITestOutputHelper output) => _output = output;

    [Fact]
    public void MutatedCheckpointsOnlyEverFailWithTheDocumentedException()
    {
        var (code, text) = ProcessRunner.Run("dotnet", null, 600_000, Fuzz, "--cases", "2500", "--seed", "20261129", "--json", "--show", "20");
        _output.WriteLine(text);
        using var report = JsonDocument.Parse(text[text.IndexOf('{')..]);
        var outcomes = report.RootElement.GetProperty("outcomes");
        Assert.Equal(2500, report.RootElement.GetProperty("cases").GetInt32());
        foreach (var bad in new[] { "other_exception", "crash_or_hang", "over_memory_budget", "silent_value_change" })
        {
            Assert.True(outcomes.GetProperty(bad).GetInt32() == 0, $"{bad}: {text}");
        }
        // The mutator is strong enough to matter: most cases are refused, and every family ran.
        Assert.True(outcomes.GetProperty("documented_exception").GetInt32() > 1500);
        Assert.Equal(9, report.RootElement.GetProperty("by_family").EnumerateObject().Count());
        Assert.Equal(0, code);
    }

    [Fact]
    public void ASigkillDuringSaveAlwaysLeavesOneCompleteStateAndTheNextSaveCleansUp()
    {
        var (code, text) = ProcessRunner.Run("dotnet", null, 600_000, Fuzz, "--kills", "6", "--seed", "11");
        _output.WriteLine(text);
        Assert.Matches(@"complete states after the kill +6\n", text);
        Assert.Matches(@"emagen verify OK +6\n", text);
        Assert.Matches(@"staging entries after next save +0\n", text);
        Assert.DoesNotContain("PROBLEM", text);
        Assert.Equal(0, code);
    }

    [Fact]
    public void MemoryAmplificationInputsAreRefusedUnderTheBudget()
    {
        var (code, text) = ProcessRunner.Run("dotnet", null, 600_000, Fuzz, "--amplification", "--memory-mb", "256");
        _output.WriteLine(text);
        Assert.Contains("all refused under the 256 MB budget", text);
        foreach (var name in new[] { "deflated records claiming 2 GiB", "26 keys aliasing a 100 MB item", "self-referencing pickle, inspect ", "self-referencing pickle, inspect --json" })
        {
            Assert.Contains(name, text);
        }
        Assert.Equal(0, code);
    }
}

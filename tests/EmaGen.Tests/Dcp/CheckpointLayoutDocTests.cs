using System.IO;
using System.Linq;
using System.Reflection;
using System.Text.RegularExpressions;
using EmaGen.Tests.Support;
using Xunit;

namespace EmaGen.Tests.Dcp;

/// <summary>docs/checkpoint-layout.md names exactly the <c>_emagen.*</c> keys that <c>CheckpointKeys</c> spells.</summary>
public sealed class CheckpointLayoutDocTests
{
    [Fact]
    public void TheLayoutNoteListsEveryKeyTheCodeWritesAndNoOther()
    {
        var keys = typeof(CheckpointKeys).GetFields(BindingFlags.Public | BindingFlags.Static)
            .Where(f => f.IsLiteral && f.Name != nameof(CheckpointKeys.Segment))
            .Select(f => (string)f.GetRawConstantValue()!)
            .ToHashSet();
        var doc = File.ReadAllText(Path.Combine(TestPaths.TestsRoot(), "..", "..", "docs", "checkpoint-layout.md"));
        var documented = Regex.Matches(doc, @"_emagen\.(\{(?<list>[a-z_,]+)\}|(?<one>[a-z_]+))")
            .SelectMany(m => m.Groups["list"].Success ? m.Groups["list"].Value.Split(',') : [m.Groups["one"].Value])
            .ToHashSet();
        Assert.Empty(keys.Except(documented));
        Assert.Empty(documented.Except(keys));
        Assert.Contains("current_decay", documented);
    }
}

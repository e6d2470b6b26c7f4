using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text.RegularExpressions;
using EmaGen.Tests.Support;
using Xunit;

namespace EmaGen.Tests.Docs;

/// <summary>Every Markdown document that a source file or a document under src/ names exists in the repository.</summary>
public sealed partial class DocReferenceTests
{
    private static readonly string RepoRoot = Path.GetFullPath(Path.Combine(TestPaths.TestsRoot(), "..", ".."));

    [Fact]
    public void EveryMarkdownNameInSrcIsADocumentOfTheRepository()
    {
        var missing = new List<string>();
        var found = new HashSet<string>(StringComparer.Ordinal);
        var sources = Directory.EnumerateFiles(Path.Combine(RepoRoot, "src"), "*.*", SearchOption.AllDirectories)
            .Where(f => f.EndsWith(".cs", StringComparison.Ordinal) || f.EndsWith(".md", StringComparison.Ordinal))
            .Where(f => !f.Split(Path.DirectorySeparatorChar).Any(part => part is "bin" or "obj"));
        foreach (var file in sources)
        {
            foreach (var name in MarkdownNames(File.ReadAllText(file)))
            {
                found.Add(name);
                if (!Resolves(name, Path.GetDirectoryName(file)!)) missing.Add($"{Path.GetRelativePath(RepoRoot, file)}: {name}");
            }
        }
        Assert.Empty(missing);
        Assert.Contains("docs/dcp-format.md", found); // the scan sees the names it is meant to check
    }

    [Theory]
    [InlineData("see docs/checkpoint-layout.md, §2", "docs/checkpoint-layout.md")]
    [InlineData("(dcp-format.md §3)", "dcp-format.md")]
    [InlineData("https://github.com/emagen/emagen/blob/main/docs/diagnostics.md#ema001", "docs/diagnostics.md")]
    [InlineData("https://github.com/dotnet/roslyn-analyzers/blob/main/Help.md", null)]
    public void NamesAreFoundInTextAndLinksElsewhereAreLeftAlone(string text, string? expected)
    {
        string[] names = expected is null ? [] : [expected];
        Assert.Equal(names, MarkdownNames(text));
    }

    // A name is a path relative to the repository root, or relative to the naming file, or a bare name of a document in
    // docs/ or at the root. Links into this repository count by their path; other links are not checked.
    private static bool Resolves(string name, string directory) =>
        File.Exists(Path.Combine(RepoRoot, name)) || File.Exists(Path.Combine(directory, name))
        || (!name.Contains('/') && File.Exists(Path.Combine(RepoRoot, "docs", name)));

    private static IEnumerable<string> MarkdownNames(string text)
    {
        foreach (Match url in Url().Matches(text))
        {
            if (OwnRepository().Match(url.Value) is { Success: true } own && own.Groups["path"].Value.EndsWith(".md", StringComparison.Ordinal))
            {
                yield return own.Groups["path"].Value;
            }
        }
        foreach (Match name in MarkdownName().Matches(Url().Replace(text, " "))) yield return name.Value;
    }

    [GeneratedRegex(@"https?://[^\s)""'<>]+")]
    private static partial Regex Url();

    [GeneratedRegex(@"github\.com/emagen/emagen/blob/[^/]+/(?<path>[^#?]+)")]
    private static partial Regex OwnRepository();

    [GeneratedRegex(@"[A-Za-z0-9_.\-/]*[A-Za-z0-9_]\.md\b")]
    private static partial Regex MarkdownName();
}

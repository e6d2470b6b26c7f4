using System;
using System.Collections.Generic;
using System.Collections.Immutable;
using System.IO;
using System.Linq;
using EmaGen.Generator;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;

namespace EmaGen.Tests.Support;

/// <summary>Runs <see cref="EmaTrackedGenerator"/> over source text against the real TorchSharp and EmaGen assemblies.</summary>
internal static class GeneratorHarness
{
    public static readonly CSharpParseOptions ParseOptions = new(LanguageVersion.CSharp14);

    private static readonly Lazy<ImmutableArray<MetadataReference>> References = new(() =>
    {
        var tpa = ((string)AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES")!).Split(Path.PathSeparator);
        var paths = tpa.Where(p => Path.GetFileName(p).StartsWith("System.", StringComparison.Ordinal)
                                   || Path.GetFileName(p) is "netstandard.dll" or "mscorlib.dll")
            .Append(typeof(TorchSharp.torch).Assembly.Location)
            .Append(typeof(EmaManager<>).Assembly.Location)
            .Distinct();
        return paths.Select(p => (MetadataReference)MetadataReference.CreateFromFile(p)).ToImmutableArray();
    });

    public static CSharpCompilation Compile(params string[] sources) =>
        CSharpCompilation.Create(
            "GeneratorTestInput",
            sources.Select((s, i) => CSharpSyntaxTree.ParseText(s, ParseOptions, path: $"Input{i}.cs")),
            References.Value,
            new CSharpCompilationOptions(OutputKind.DynamicallyLinkedLibrary, nullableContextOptions: NullableContextOptions.Enable));

    public static GeneratorDriver CreateDriver(bool trackSteps = false) =>
        CSharpGeneratorDriver.Create(
            new[] { new EmaTrackedGenerator().AsSourceGenerator() },
            parseOptions: ParseOptions,
            driverOptions: new GeneratorDriverOptions(IncrementalGeneratorOutputKind.None, trackIncrementalGeneratorSteps: trackSteps));

    public static Result Run(params string[] sources)
    {
        var input = Compile(sources);
        var driver = CreateDriver().RunGeneratorsAndUpdateCompilation(input, out var output, out var generatorDiagnostics);
        var run = driver.GetRunResult();
        var generated = run.GeneratedTrees.ToDictionary(t => Path.GetFileName(t.FilePath), t => t.GetText().ToString());
        return new Result(generatorDiagnostics, output.GetDiagnostics(), generated);
    }

    public sealed record Result(
        ImmutableArray<Diagnostic> GeneratorDiagnostics,
        ImmutableArray<Diagnostic> OutputDiagnostics,
        IReadOnlyDictionary<string, string> Generated)
    {
        /// <summary>Errors anywhere, and warnings in generated code (the test inputs may warn about their own unused fields).</summary>
        public IEnumerable<Diagnostic> OutputErrorsAndWarnings =>
            OutputDiagnostics.Where(d => d.Severity == DiagnosticSeverity.Error
                || (d.Severity == DiagnosticSeverity.Warning && d.Location.SourceTree?.FilePath.EndsWith(".g.cs", StringComparison.Ordinal) == true));
    }
}

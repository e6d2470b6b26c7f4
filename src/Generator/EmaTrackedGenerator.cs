using EmaGen.Generator.Emitting;
using EmaGen.Generator.Parsing;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.CSharp.Syntax;

namespace EmaGen.Generator;

/// <summary>
/// The incremental pipeline: [EmaTracked] classes are parsed into equatable specs (tracking name
/// <see cref="TrackingNames.Specs"/>), diagnostics are reported from their own output, and source is emitted only when a
/// spec really changes.
/// </summary>
[Generator(LanguageNames.CSharp)]
public sealed class EmaTrackedGenerator : IIncrementalGenerator
{
    private const string AttributeName = "EmaGen.EmaTrackedAttribute";

    // C# 14 brought extension properties; the typed `manager.Shadow` needs them.
    private const int CSharp14 = 1400;

    public void Initialize(IncrementalGeneratorInitializationContext context)
    {
        var results = context.SyntaxProvider
            .ForAttributeWithMetadataName(
                AttributeName,
                predicate: static (node, _) => node is ClassDeclarationSyntax,
                transform: TrackedClassParser.Parse)
            .WithTrackingName(TrackingNames.Parse);

        // Only the reporting step sees the compilation (to locate diagnostics in their syntax trees, so #pragma applies);
        // parsing and emission stay cached on the equatable specs.
        context.RegisterSourceOutput(results.Select(static (r, _) => r.Diagnostics).Combine(context.CompilationProvider), static (spc, input) =>
        {
            var (diagnostics, compilation) = input;
            foreach (var d in diagnostics) spc.ReportDiagnostic(d.ToDiagnostic(compilation));
        });

        var specs = results
            .Where(static r => r.Spec is not null)
            .Select(static (r, _) => r.Spec!)
            .WithTrackingName(TrackingNames.Specs);

        var supportsExtensionProperties = context.ParseOptionsProvider
            .Select(static (o, _) => o is CSharpParseOptions p && (int)p.LanguageVersion >= CSharp14);

        context.RegisterSourceOutput(specs.Combine(supportsExtensionProperties), static (spc, input) =>
        {
            var (spec, extensions) = input;
            spc.AddSource(TrackedClassEmitter.HintName(spec), TrackedClassEmitter.Emit(spec, extensions));
        });
    }
}

/// <summary>Names of the pipeline steps, asserted on by the incrementality tests.</summary>
public static class TrackingNames
{
    /// <summary>Parsing an [EmaTracked] class into a spec plus diagnostics.</summary>
    public const string Parse = "EmaTrackedClasses";

    /// <summary>The specs that emission consumes.</summary>
    public const string Specs = "EmaTrackedSpecs";
}

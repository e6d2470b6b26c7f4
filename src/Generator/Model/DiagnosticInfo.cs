using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.Text;

namespace EmaGen.Generator.Model;

/// <summary>
/// A diagnostic as plain values. A <see cref="Location"/> holds its syntax tree, which would defeat caching, so the
/// pipeline carries the file path and spans and rebuilds the location when reporting.
/// </summary>
internal sealed record DiagnosticInfo(
    DiagnosticDescriptor Descriptor,
    string FilePath,
    TextSpan Span,
    LinePositionSpan LineSpan,
    EquatableArray<string> Arguments)
{
    public static DiagnosticInfo Create(DiagnosticDescriptor descriptor, Location? location, params string[] arguments)
    {
        location ??= Location.None;
        var lineSpan = location.GetLineSpan();
        return new DiagnosticInfo(descriptor, lineSpan.Path ?? "", location.SourceSpan, lineSpan.Span, arguments.ToEquatableArray());
    }

    public Diagnostic ToDiagnostic()
    {
        var location = FilePath.Length == 0 ? Location.None : Location.Create(FilePath, Span, LineSpan);
        var args = new object[Arguments.Length];
        for (int i = 0; i < args.Length; i++) args[i] = Arguments[i];
        return Diagnostic.Create(Descriptor, location, args);
    }
}

/// <summary>What parsing one [EmaTracked] class produced: a spec to emit (when it has no errors) and its diagnostics.</summary>
internal sealed record ParseResult(TrackedClassSpec? Spec, EquatableArray<DiagnosticInfo> Diagnostics);

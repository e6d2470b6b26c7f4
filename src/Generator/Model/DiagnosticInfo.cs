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

    /// <summary>
    /// The diagnostic, located in <paramref name="compilation"/>'s syntax tree of the same path when there is one: a
    /// location in a source tree is what lets <c>#pragma warning disable</c> and <c>[SuppressMessage]</c> apply.
    /// </summary>
    public Diagnostic ToDiagnostic(Compilation? compilation = null)
    {
        Location location = Location.None;
        if (FilePath.Length > 0)
        {
            location = Location.Create(FilePath, Span, LineSpan);
            if (compilation is not null)
            {
                foreach (var tree in compilation.SyntaxTrees)
                {
                    if (tree.FilePath == FilePath && Span.End <= tree.Length)
                    {
                        location = Location.Create(tree, Span);
                        break;
                    }
                }
            }
        }
        var args = new object[Arguments.Length];
        for (int i = 0; i < args.Length; i++) args[i] = Arguments[i];
        return Diagnostic.Create(Descriptor, location, args);
    }
}

/// <summary>What parsing one [EmaTracked] class produced: a spec to emit (when it has no errors) and its diagnostics.</summary>
internal sealed record ParseResult(TrackedClassSpec? Spec, EquatableArray<DiagnosticInfo> Diagnostics);

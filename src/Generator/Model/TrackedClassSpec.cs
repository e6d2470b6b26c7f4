namespace EmaGen.Generator.Model;

/// <summary>Everything the emitter needs about one [EmaTracked] class; plain values only, no symbols.</summary>
/// <param name="Namespace">Containing namespace, or empty for the global namespace.</param>
/// <param name="Name">The class name.</param>
/// <param name="ContainingTypes">Enclosing types, outermost first.</param>
/// <param name="FullyQualifiedName">The <c>global::</c> qualified name.</param>
/// <param name="ExtensionAccessibility">"public" or "internal" for the typed <c>Shadow</c> extension, or null when the class is not reachable from a top-level type.</param>
/// <param name="Members">Members that hold components: the class's own fields in declaration order, then each base class's.</param>
/// <param name="Accessors">UnsafeAccessor classes for private base-class fields.</param>
/// <param name="ReflectionRoots">Module types registered by TorchSharp's reflection that NativeAOT must keep the fields of.</param>
internal sealed record TrackedClassSpec(
    string Namespace,
    string Name,
    EquatableArray<ContainingTypeSpec> ContainingTypes,
    string FullyQualifiedName,
    string? ExtensionAccessibility,
    EquatableArray<MemberSpec> Members,
    EquatableArray<AccessorClassSpec> Accessors,
    EquatableArray<string> ReflectionRoots);

/// <summary>An enclosing type the generated partial must be nested in.</summary>
/// <param name="Keyword">"class", "struct", "record", "record struct" or "interface".</param>
/// <param name="Name">The type's name.</param>
internal sealed record ContainingTypeSpec(string Keyword, string Name);

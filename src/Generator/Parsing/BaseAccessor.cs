using System.Collections.Generic;
using System.Linq;
using EmaGen.Generator.Model;
using Microsoft.CodeAnalysis;

namespace EmaGen.Generator.Parsing;

/// <summary>
/// Collects the private fields of one base class that the tracked class cannot name, so the emitter can read them
/// through <c>[UnsafeAccessor]</c> methods (no reflection, NativeAOT-safe). A generic base gets a generic accessor
/// class over its own type parameters, since a field typed <c>T</c> is only found through the open signature.
/// </summary>
internal sealed class BaseAccessor
{
    private readonly INamedTypeSymbol _base;
    private readonly int _index;
    private readonly SymbolDisplayFormat _format;
    private readonly List<AccessorFieldSpec> _fields = new();

    public BaseAccessor(INamedTypeSymbol baseType, int index, SymbolDisplayFormat format)
    {
        _base = baseType;
        _index = index;
        _format = format;
    }

    private string Name => "__EmaGenBase" + _index.ToString(System.Globalization.CultureInfo.InvariantCulture);

    private bool IsGeneric => _base.TypeArguments.Length > 0;

    /// <summary>Records <paramref name="field"/>; returns the accessor class to call (closed over the base's type arguments).</summary>
    public string Add(IFieldSymbol field)
    {
        _fields.Add(new AccessorFieldSpec(field.Name, field.OriginalDefinition.Type.ToDisplayString(_format)));
        return IsGeneric ? $"{Name}<{string.Join(", ", _base.TypeArguments.Select(t => t.ToDisplayString(_format)))}>" : Name;
    }

    public AccessorClassSpec? Spec()
    {
        if (_fields.Count == 0) return null;
        var definition = _base.OriginalDefinition;
        string className = IsGeneric ? $"{Name}<{string.Join(", ", definition.TypeParameters.Select(t => t.Name))}>" : Name;
        string self = (IsGeneric ? definition : _base).ToDisplayString(_format);
        return new AccessorClassSpec(className, IsGeneric ? Constraints(definition) : "", self, _fields.ToEquatableArray());
    }

    private string Constraints(INamedTypeSymbol definition)
    {
        var clauses = new List<string>();
        foreach (var t in definition.TypeParameters)
        {
            var parts = new List<string>();
            if (t.HasReferenceTypeConstraint) parts.Add("class");
            if (t.HasUnmanagedTypeConstraint) parts.Add("unmanaged");
            else if (t.HasValueTypeConstraint) parts.Add("struct");
            if (t.HasNotNullConstraint) parts.Add("notnull");
            parts.AddRange(t.ConstraintTypes.Select(c => c.ToDisplayString(_format)));
            if (t.HasConstructorConstraint) parts.Add("new()");
            if (parts.Count > 0) clauses.Add($"where {t.Name} : {string.Join(", ", parts)}");
        }
        return string.Join(" ", clauses);
    }
}

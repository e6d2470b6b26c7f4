using System.Collections.Generic;
using System.Linq;
using System.Threading;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp.Syntax;

namespace EmaGen.Generator.Parsing;

/// <summary>
/// Finds the module types a tracked class uses whose parameters TorchSharp registers by reflection (its
/// <c>RegisterComponents()</c> reads their fields), so the emitter can keep those fields for NativeAOT with
/// <c>[DynamicDependency]</c>: field and element types, modules created with <c>new</c> in the class (say inside a
/// <c>Sequential(...)</c> call), and, transitively, the fields, bases and creations of those types. Module classes
/// of the user's own that are not [EmaTracked] are also reported once each (EMA013).
/// </summary>
internal sealed class ReflectionRoots
{
    private readonly KnownTypes _known;
    private readonly Compilation _compilation;
    private readonly SymbolDisplayFormat _format;
    private readonly HashSet<ITypeSymbol> _seen = new(SymbolEqualityComparer.Default);
    private readonly List<INamedTypeSymbol> _roots = new();
    private readonly HashSet<string> _warned = new();

    public ReflectionRoots(KnownTypes known, Compilation compilation, SymbolDisplayFormat format)
    {
        _known = known;
        _compilation = compilation;
        _format = format;
    }

    /// <summary>Untracked module classes of the user's own, each with the first place it is used.</summary>
    public List<(string TypeName, Location? Site)> Warnings { get; } = new();

    /// <summary>A module type held by a member whose parameters only run time knows.</summary>
    public void AddDynamic(ITypeSymbol type, Location? site)
    {
        if (!KnownTypes.IsTorchSharp(type) && type is INamedTypeSymbol && _warned.Add(type.ToDisplayString(_format)))
        {
            Warnings.Add((type.ToDisplayString(SymbolDisplayFormat.CSharpErrorMessageFormat), site));
        }
        Root(type);
    }

    /// <summary>Modules the tracked class creates with <c>new</c>: they may sit in a Sequential or a field typed as a base.</summary>
    public void AddCreatedModules(INamedTypeSymbol tracked, CancellationToken cancellationToken)
    {
        foreach (var (type, site) in CreatedModules(tracked, cancellationToken))
        {
            // TorchSharp's own modules created here matter only when a field holds them, and then the field roots them.
            if (!KnownTypes.IsTorchSharp(type) && !_known.HasAttribute(type, _known.EmaTracked)) AddDynamic(type, site);
        }
    }

    /// <summary>The roots the generated code inside <paramref name="within"/> can name, fully qualified, in discovery order.</summary>
    public IEnumerable<string> Names(INamedTypeSymbol within) => _roots
        .Where(t => _compilation.IsSymbolAccessibleWithin(t, within))
        .Select(t => t.ToDisplayString(_format));

    private void Root(ITypeSymbol type)
    {
        if (type is not INamedTypeSymbol named || !_seen.Add(named) || ContainsTypeParameters(named)) return;
        if (_known.HasAttribute(named, _known.EmaTracked)) return;
        _roots.Add(named);
        for (var b = named.BaseType; b is not null && !KnownTypes.IsTorchSharp(b); b = b.BaseType)
        {
            Root(b);
            RootFields(b);
        }
        RootFields(named);
        if (KnownTypes.IsTorchSharp(named)) return;
        foreach (var (created, _) in CreatedModules(named, CancellationToken.None))
        {
            if (!KnownTypes.IsTorchSharp(created)) Root(created);
        }
    }

    private void RootFields(INamedTypeSymbol type)
    {
        foreach (var field in type.GetMembers().OfType<IFieldSymbol>())
        {
            if (field.IsStatic) continue;
            var held = field.Type is IArrayTypeSymbol array ? array.ElementType : field.Type;
            if (held is INamedTypeSymbol { TypeArguments.Length: > 0 } generic && KnownTypes.DerivesFrom(generic, _known.ModuleListOfT))
            {
                foreach (var argument in generic.TypeArguments) if (_known.IsModule(argument)) Root(argument);
            }
            if (_known.IsModule(held)) Root(held);
        }
    }

    private IEnumerable<(ITypeSymbol Type, Location Site)> CreatedModules(INamedTypeSymbol type, CancellationToken cancellationToken)
    {
        foreach (var reference in type.DeclaringSyntaxReferences)
        {
            var node = reference.GetSyntax(cancellationToken);
            var model = _compilation.GetSemanticModel(node.SyntaxTree);
            foreach (var creation in node.DescendantNodes().OfType<BaseObjectCreationExpressionSyntax>())
            {
                if (model.GetTypeInfo(creation, cancellationToken).Type is { } created && _known.IsModule(created))
                {
                    yield return (created, creation.GetLocation());
                }
            }
        }
    }

    private static bool ContainsTypeParameters(INamedTypeSymbol type)
    {
        foreach (var argument in type.TypeArguments)
        {
            if (argument is ITypeParameterSymbol) return true;
            if (argument is INamedTypeSymbol named && ContainsTypeParameters(named)) return true;
        }
        return type.ContainingType is { } outer && ContainsTypeParameters(outer);
    }
}

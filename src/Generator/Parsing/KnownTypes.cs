using System.Runtime.CompilerServices;
using Microsoft.CodeAnalysis;

namespace EmaGen.Generator.Parsing;

/// <summary>The TorchSharp and EmaGen types parsing compares against, resolved once per compilation.</summary>
internal sealed class KnownTypes
{
    private KnownTypes(Compilation compilation)
    {
        Module = compilation.GetTypeByMetadataName("TorchSharp.torch+nn+Module");
        Tensor = compilation.GetTypeByMetadataName("TorchSharp.torch+Tensor");
        Parameter = compilation.GetTypeByMetadataName("TorchSharp.Modules.Parameter");
        ModuleListOfT = compilation.GetTypeByMetadataName("TorchSharp.Modules.ModuleList`1");
        ComponentName = compilation.GetTypeByMetadataName("TorchSharp.Utils.ComponentNameAttribute");
        EmaTracked = compilation.GetTypeByMetadataName("EmaGen.EmaTrackedAttribute");
        EmaIgnore = compilation.GetTypeByMetadataName("EmaGen.EmaIgnoreAttribute");
        EmaShard = compilation.GetTypeByMetadataName("EmaGen.EmaShardAttribute");
        EmaReplicate = compilation.GetTypeByMetadataName("EmaGen.EmaReplicateAttribute");
    }

    public INamedTypeSymbol? Module { get; }
    public INamedTypeSymbol? Tensor { get; }
    public INamedTypeSymbol? Parameter { get; }
    public INamedTypeSymbol? ModuleListOfT { get; }
    public INamedTypeSymbol? ComponentName { get; }
    public INamedTypeSymbol? EmaTracked { get; }
    public INamedTypeSymbol? EmaIgnore { get; }
    public INamedTypeSymbol? EmaShard { get; }
    public INamedTypeSymbol? EmaReplicate { get; }

    // Each [EmaTracked] class is parsed in its own transform call; the nine lookups by metadata name are done once per
    // compilation, not once per class, and dropped with the compilation.
    private static readonly ConditionalWeakTable<Compilation, KnownTypes> PerCompilation = new();

    public static KnownTypes From(Compilation compilation) =>
        PerCompilation.GetValue(compilation, static c => new KnownTypes(c));

    public bool IsModule(ITypeSymbol? type) => DerivesFrom(type, Module);

    public bool IsTensor(ITypeSymbol? type) => DerivesFrom(type, Tensor);

    public bool IsParameter(ITypeSymbol? type) => DerivesFrom(type, Parameter);

    /// <summary>Tensors, parameters and modules: what TorchSharp's RegisterComponents() registers.</summary>
    public bool IsComponent(ITypeSymbol? type) => IsModule(type) || IsTensor(type);

    public bool HasAttribute(ISymbol symbol, INamedTypeSymbol? attribute)
    {
        if (attribute is null) return false;
        foreach (var a in symbol.GetAttributes())
        {
            if (SymbolEqualityComparer.Default.Equals(a.AttributeClass, attribute)) return true;
        }
        return false;
    }

    /// <summary>True for types declared in TorchSharp itself.</summary>
    public static bool IsTorchSharp(ITypeSymbol type) => type.ContainingAssembly?.Name == "TorchSharp";

    public static bool DerivesFrom(ITypeSymbol? type, INamedTypeSymbol? baseType)
    {
        if (baseType is null) return false;
        for (var t = type; t is not null; t = t.BaseType)
        {
            if (SymbolEqualityComparer.Default.Equals(t.OriginalDefinition, baseType)) return true;
        }
        return false;
    }
}

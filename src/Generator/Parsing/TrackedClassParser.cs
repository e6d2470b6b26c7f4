using System.Collections.Generic;
using System.Linq;
using System.Threading;
using EmaGen.Generator.Model;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.CSharp.Syntax;

namespace EmaGen.Generator.Parsing;

/// <summary>Turns one [EmaTracked] class symbol into a <see cref="TrackedClassSpec"/> plus diagnostics. No symbol leaves this class.</summary>
internal sealed class TrackedClassParser
{
    private static readonly SymbolDisplayFormat QualifiedFormat = SymbolDisplayFormat.FullyQualifiedFormat
        .WithMiscellaneousOptions(SymbolDisplayMiscellaneousOptions.UseSpecialTypes | SymbolDisplayMiscellaneousOptions.EscapeKeywordIdentifiers);

    private static readonly SymbolDisplayFormat DisplayFormat = SymbolDisplayFormat.FullyQualifiedFormat
        .WithGlobalNamespaceStyle(SymbolDisplayGlobalNamespaceStyle.Omitted)
        .WithMiscellaneousOptions(SymbolDisplayMiscellaneousOptions.UseSpecialTypes);

    private const int Replicated = -1;

    private readonly KnownTypes _known;
    private readonly Compilation _compilation;
    private readonly List<DiagnosticInfo> _diagnostics = new();
    private readonly List<AccessorClassSpec> _accessors = new();
    private readonly ReflectionRoots _roots;
    private int _classShardDim;

    private TrackedClassParser(KnownTypes known, Compilation compilation)
    {
        _known = known;
        _compilation = compilation;
        _roots = new ReflectionRoots(known, compilation, QualifiedFormat);
    }

    public static ParseResult Parse(GeneratorAttributeSyntaxContext context, CancellationToken cancellationToken)
    {
        if (context.TargetSymbol is not INamedTypeSymbol type || context.TargetNode is not ClassDeclarationSyntax syntax)
        {
            return new ParseResult(null, EquatableArray<DiagnosticInfo>.Empty);
        }
        var parser = new TrackedClassParser(KnownTypes.From(context.SemanticModel.Compilation), context.SemanticModel.Compilation);
        var spec = parser.ParseClass(type, syntax, cancellationToken);
        return new ParseResult(spec, parser._diagnostics.ToEquatableArray());
    }

    private TrackedClassSpec? ParseClass(INamedTypeSymbol type, ClassDeclarationSyntax syntax, CancellationToken cancellationToken)
    {
        var location = syntax.Identifier.GetLocation();
        var display = type.ToDisplayString(DisplayFormat);
        bool ok = true;

        if (!syntax.Modifiers.Any(SyntaxKind.PartialKeyword))
        {
            Report(DiagnosticDescriptors.NotPartial, location, display);
            ok = false;
        }
        if (IsGenericOrInGeneric(type))
        {
            Report(DiagnosticDescriptors.GenericNotSupported, location, display);
            ok = false;
        }
        var containing = new List<ContainingTypeSpec>();
        for (var outer = type.ContainingType; outer is not null; outer = outer.ContainingType)
        {
            if (!IsPartial(outer, cancellationToken))
            {
                Report(DiagnosticDescriptors.ContainingTypeNotPartial, outer.Locations.FirstOrDefault(), outer.ToDisplayString(DisplayFormat), display);
                ok = false;
            }
            containing.Insert(0, new ContainingTypeSpec(Keyword(outer), outer.Name));
        }
        if (!_known.IsModule(type))
        {
            Report(DiagnosticDescriptors.NotAModule, location, display);
            return null;
        }

        _classShardDim = ShardDim(type, 0, ref ok);
        ok &= CheckNoRegisterComponentsOverride(type, display);

        var members = ParseMembers(type, display, cancellationToken);
        if (!ok || members is null) return null;
        _roots.AddCreatedModules(type, cancellationToken);
        foreach (var (moduleType, site) in _roots.Warnings)
        {
            Report(DiagnosticDescriptors.ReflectionRegisteredModule, site, moduleType);
        }

        return new TrackedClassSpec(
            type.ContainingNamespace.IsGlobalNamespace ? "" : type.ContainingNamespace.ToDisplayString(),
            type.Name,
            containing.ToEquatableArray(),
            type.ToDisplayString(QualifiedFormat),
            ExtensionAccessibility(type),
            members.ToEquatableArray(),
            _accessors.ToEquatableArray(),
            _roots.Names(type).ToEquatableArray());
    }

    // TorchSharp's reflection registers the fields GetFields() returns for the runtime type (its own, then the inherited
    // non-private ones, nearest base first), then walks each base class for its private fields. Same order here.
    private List<MemberSpec>? ParseMembers(INamedTypeSymbol type, string display, CancellationToken cancellationToken)
    {
        var members = new List<MemberSpec>();
        var byName = new Dictionary<string, string>();
        bool ok = true;
        var bases = new List<INamedTypeSymbol>();
        for (var b = type.BaseType; b is not null && !KnownTypes.IsTorchSharp(b); b = b.BaseType) bases.Add(b);
        var accessors = bases.Select((b, i) => new BaseAccessor(b, _accessors.Count + i, QualifiedFormat)).ToList();

        var order = type.GetMembers().Select(m => (Declaring: type, Accessor: (BaseAccessor?)null, Symbol: m))
            .Concat(bases.SelectMany((b, i) => b.GetMembers().Where(m => m.DeclaredAccessibility != Accessibility.Private).Select(m => (b, (BaseAccessor?)accessors[i], m))))
            .Concat(bases.SelectMany((b, i) => b.GetMembers().Where(m => m.DeclaredAccessibility == Accessibility.Private).Select(m => (b, (BaseAccessor?)accessors[i], m))));
        foreach (var (declaring, accessor, symbol) in order)
        {
            cancellationToken.ThrowIfCancellationRequested();
            if (symbol.IsStatic) continue;
            bool ignored = _known.HasAttribute(symbol, _known.EmaIgnore);

            if (symbol is IPropertySymbol property)
            {
                if (IsAutoProperty(declaring, property) && _known.IsComponent(property.Type))
                {
                    Report(DiagnosticDescriptors.AutoPropertyComponent, property.Locations.FirstOrDefault(), property.Name, KindWord(property.Type));
                    ok = false;
                }
                else if (ignored)
                {
                    Report(DiagnosticDescriptors.IgnoreHasNoEffect, property.Locations.FirstOrDefault(), property.Name);
                }
                continue;
            }
            if (symbol is not IFieldSymbol field || field.IsConst || field.IsImplicitlyDeclared) continue;

            var member = ClassifyField(field, ignored, ShardDim(field, _classShardDim, ref ok), ref ok);
            if (member is null) continue;
            if (accessor is not null && !_compilation.IsSymbolAccessibleWithin(field, type, type))
            {
                member = member with { Accessor = accessor.Add(field) };
            }
            if (byName.TryGetValue(member.Name, out var first))
            {
                Report(DiagnosticDescriptors.DuplicateName, field.Locations.FirstOrDefault(), first, field.Name, display, member.Name);
                ok = false;
                continue;
            }
            byName[member.Name] = field.Name;
            members.Add(member);
        }
        foreach (var accessor in accessors)
        {
            if (accessor.Spec() is { } spec) _accessors.Add(spec);
        }
        return ok ? members : null;
    }

    private MemberSpec? ClassifyField(IFieldSymbol field, bool ignored, int shardDim, ref bool ok)
    {
        var type = field.Type;
        var location = field.Locations.FirstOrDefault();
        string name = ComponentName(field) ?? field.Name;
        bool nullable = field.NullableAnnotation == NullableAnnotation.Annotated;

        MemberSpec Make(MemberKind kind, ModuleTypeSpec? module, int dim) =>
            new(name, field.Name, kind, type.WithNullableAnnotation(NullableAnnotation.NotAnnotated).ToDisplayString(QualifiedFormat), ignored, nullable, module, dim);

        if (_known.IsParameter(type)) return Make(MemberKind.Parameter, null, shardDim);
        // Buffers are replicated (FSDP2 does not shard them, nor does ShardedEmaManager): [EmaShard] on one is reported.
        if (_known.IsTensor(type))
        {
            if (_known.HasAttribute(field, _known.EmaShard))
            {
                Report(DiagnosticDescriptors.ShardOnBuffer, location, field.Name);
            }
            return Make(MemberKind.Buffer, null, Replicated);
        }

        MemberKind kind;
        ITypeSymbol? moduleType;
        if (type is IArrayTypeSymbol { Rank: 1 } array && _known.IsModule(array.ElementType))
        {
            kind = MemberKind.ModuleArray;
            moduleType = array.ElementType;
        }
        else if (type is INamedTypeSymbol named && KnownTypes.DerivesFrom(named, _known.ModuleListOfT))
        {
            kind = MemberKind.ModuleList;
            moduleType = ModuleListElement(named);
        }
        else if (_known.IsModule(type))
        {
            kind = MemberKind.Module;
            moduleType = type;
        }
        else
        {
            if (ignored) Report(DiagnosticDescriptors.IgnoreHasNoEffect, location, field.Name);
            return null;
        }

        var module = moduleType is null ? null : ClassifyModule(moduleType, location);
        return Make(kind, module, shardDim);
    }

    // [EmaShard(dim)] or [EmaReplicate] on the symbol, else the inherited default.
    private int ShardDim(ISymbol symbol, int inherited, ref bool ok)
    {
        foreach (var attribute in symbol.GetAttributes())
        {
            if (SymbolEqualityComparer.Default.Equals(attribute.AttributeClass, _known.EmaReplicate)) return Replicated;
            if (!SymbolEqualityComparer.Default.Equals(attribute.AttributeClass, _known.EmaShard)) continue;
            int dim = attribute.ConstructorArguments.Length > 0 && attribute.ConstructorArguments[0].Value is int d ? d : 0;
            if (dim < 0)
            {
                Report(DiagnosticDescriptors.NegativeShardDim, attribute.ApplicationSyntaxReference?.GetSyntax().GetLocation() ?? symbol.Locations.FirstOrDefault(), symbol.Name, dim.ToString(System.Globalization.CultureInfo.InvariantCulture));
                ok = false;
                return 0;
            }
            return dim;
        }
        return inherited;
    }

    private ITypeSymbol? ModuleListElement(INamedTypeSymbol type)
    {
        for (INamedTypeSymbol? t = type; t is not null; t = t.BaseType)
        {
            if (SymbolEqualityComparer.Default.Equals(t.OriginalDefinition, _known.ModuleListOfT)) return t.TypeArguments[0];
        }
        return null;
    }

    private ModuleTypeSpec ClassifyModule(ITypeSymbol type, Location? site)
    {
        var typeName = type.WithNullableAnnotation(NullableAnnotation.NotAnnotated).ToDisplayString(QualifiedFormat);
        if (_known.HasAttribute(type, _known.EmaTracked))
        {
            return new ModuleTypeSpec(ModuleKind.Tracked, typeName, typeName + ".EmaShadow", EquatableArray<string>.Empty, EquatableArray<string>.Empty);
        }
        for (var t = type; t is not null; t = t.BaseType)
        {
            var ns = t.ContainingNamespace?.ToDisplayString() ?? "";
            if (t.ContainingType is null && BuiltinModules.ByDeclaringType.TryGetValue(ns + "." + t.MetadataName, out var builtin))
            {
                return new ModuleTypeSpec(ModuleKind.Builtin, typeName, builtin.ShadowType, builtin.Parameters.ToEquatableArray(), builtin.Buffers.ToEquatableArray(),
                    BuiltinModules.ReadFromRegisteredTree.Contains(ns + "." + t.MetadataName));
            }
            if (t.ContainingType is null && BuiltinModules.IsParameterlessBase(ns, t.Name))
            {
                return new ModuleTypeSpec(ModuleKind.Parameterless, typeName, null, EquatableArray<string>.Empty, EquatableArray<string>.Empty);
            }
        }
        // Sequential, ModuleDict, ParameterList, LSTM, MultiheadAttention, Transformer*, untracked classes: their
        // registered tree is read at bind time; under NativeAOT their fields must survive for TorchSharp's reflection.
        _roots.AddDynamic(type, site);
        return new ModuleTypeSpec(ModuleKind.Dynamic, typeName, DynamicShadowType, EquatableArray<string>.Empty, EquatableArray<string>.Empty);
    }

    private const string DynamicShadowType = "global::EmaGen.CompilerServices.EmaDynamicShadow";

    private string? ComponentName(IFieldSymbol field)
    {
        if (_known.ComponentName is null) return null;
        foreach (var attribute in field.GetAttributes())
        {
            if (!SymbolEqualityComparer.Default.Equals(attribute.AttributeClass, _known.ComponentName)) continue;
            foreach (var arg in attribute.NamedArguments)
            {
                if (arg.Key == "Name" && arg.Value.Value is string s && s.Length > 0) return s;
            }
        }
        return null;
    }

    private bool CheckNoRegisterComponentsOverride(INamedTypeSymbol type, string display)
    {
        foreach (var method in type.GetMembers("RegisterComponents").OfType<IMethodSymbol>())
        {
            if (method.IsOverride && method.Parameters.Length == 0 && !method.IsImplicitlyDeclared)
            {
                Report(DiagnosticDescriptors.RegisterComponentsOverridden, method.Locations.FirstOrDefault(), display);
                return false;
            }
        }
        return true;
    }

    private static bool IsAutoProperty(INamedTypeSymbol type, IPropertySymbol property) =>
        type.GetMembers().OfType<IFieldSymbol>().Any(f => SymbolEqualityComparer.Default.Equals(f.AssociatedSymbol, property));

    private string KindWord(ITypeSymbol type) => _known.IsParameter(type) ? "Parameter" : _known.IsTensor(type) ? "Tensor" : "Module";

    private static bool IsGenericOrInGeneric(INamedTypeSymbol type)
    {
        for (INamedTypeSymbol? t = type; t is not null; t = t.ContainingType)
        {
            if (t.TypeParameters.Length > 0) return true;
        }
        return false;
    }

    private static bool IsPartial(INamedTypeSymbol type, CancellationToken cancellationToken) =>
        type.DeclaringSyntaxReferences.All(r =>
            r.GetSyntax(cancellationToken) is TypeDeclarationSyntax t && t.Modifiers.Any(SyntaxKind.PartialKeyword));

    private static string Keyword(INamedTypeSymbol type) => type switch
    {
        { IsRecord: true, TypeKind: TypeKind.Struct } => "record struct",
        { IsRecord: true } => "record",
        { TypeKind: TypeKind.Struct } => "struct",
        { TypeKind: TypeKind.Interface } => "interface",
        _ => "class",
    };

    // The typed Shadow extension lives in a top-level static class, so it can be no more visible than the tracked class.
    private static string? ExtensionAccessibility(INamedTypeSymbol type)
    {
        bool allPublic = true;
        for (INamedTypeSymbol? t = type; t is not null; t = t.ContainingType)
        {
            switch (t.DeclaredAccessibility)
            {
                case Accessibility.Public:
                    break;
                case Accessibility.Internal:
                case Accessibility.ProtectedOrInternal:
                    allPublic = false;
                    break;
                default:
                    return null;
            }
        }
        return allPublic ? "public" : "internal";
    }

    private void Report(DiagnosticDescriptor descriptor, Location? location, params string[] arguments) =>
        _diagnostics.Add(DiagnosticInfo.Create(descriptor, location, arguments));
}

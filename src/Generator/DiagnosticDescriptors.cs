using Microsoft.CodeAnalysis;

namespace EmaGen.Generator;

/// <summary>Every diagnostic the generator reports; docs/diagnostics.md documents each id.</summary>
internal static class DiagnosticDescriptors
{
    private const string Category = "EmaGen";
    private const string HelpBase = "https://github.com/emagen/emagen/blob/main/docs/diagnostics.md#";

    public static readonly DiagnosticDescriptor NotPartial = Error(
        "EMA001", "[EmaTracked] class must be partial",
        "[EmaTracked] class '{0}' must be declared partial so that EmaGen can add its generated members");

    public static readonly DiagnosticDescriptor NotAModule = Error(
        "EMA002", "[EmaTracked] class must derive from a TorchSharp module",
        "[EmaTracked] class '{0}' does not derive from TorchSharp.torch.nn.Module; only modules have parameters to average");

    public static readonly DiagnosticDescriptor ContainingTypeNotPartial = Error(
        "EMA003", "Type containing an [EmaTracked] class must be partial",
        "'{0}' contains the [EmaTracked] class '{1}' and must be declared partial");

    public static readonly DiagnosticDescriptor GenericNotSupported = Error(
        "EMA004", "Generic [EmaTracked] classes are not supported",
        "[EmaTracked] class '{0}' is generic or nested in a generic type; make a non-generic class (derive a closed one if needed) and track that");

    public static readonly DiagnosticDescriptor DuplicateName = Error(
        "EMA006", "Two members register the same name",
        "Members '{0}' and '{1}' of '{2}' both register the name '{3}'; named_parameters() would lose one of them");

    public static readonly DiagnosticDescriptor AutoPropertyComponent = Error(
        "EMA007", "Parameter or module held in an auto-property",
        "Auto-property '{0}' holds a {1}; TorchSharp would register it as '<{0}>k__BackingField', so declare it as a field");

    public static readonly DiagnosticDescriptor RegisterComponentsOverridden = Error(
        "EMA008", "[EmaTracked] class overrides RegisterComponents",
        "'{0}' overrides RegisterComponents(), which EmaGen generates for [EmaTracked] classes (reflection-free, so NativeAOT works); remove the override and register anything extra in the constructor");

    public static readonly DiagnosticDescriptor IgnoreHasNoEffect = Warning(
        "EMA010", "[EmaIgnore] has no effect",
        "[EmaIgnore] on '{0}' has no effect: the member holds no parameters");

    public static readonly DiagnosticDescriptor ReflectionRegistration = Warning(
        "EMA011", "base.RegisterComponents() registers by reflection",
        "'{0}' calls base.RegisterComponents(), TorchSharp's reflection-based registration, which registers nothing in a NativeAOT binary; call RegisterComponents() (the generated override) instead");

    public static readonly DiagnosticDescriptor NegativeShardDim = Error(
        "EMA012", "Shard dimension must not be negative",
        "[EmaShard({1})] on '{0}': the shard dimension must be 0 or more (use [EmaReplicate] for a tensor every rank keeps whole)");

    public static readonly DiagnosticDescriptor ReflectionRegisteredModule = Warning(
        "EMA013", "Module class registers its parameters by reflection",
        "Module class '{0}' is not [EmaTracked]: TorchSharp registers its parameters by reflection. EmaGen reads them at bind time and keeps its fields for NativeAOT, but add [EmaTracked] and partial to '{0}' for reflection-free registration and a typed shadow.");

    public static readonly DiagnosticDescriptor ShardOnBuffer = Warning(
        "EMA014", "[EmaShard] on a buffer has no effect",
        "[EmaShard] on buffer '{0}' has no effect: sharded EMAs keep buffers whole on every rank, as FSDP does; remove it (or make the tensor a Parameter)");

    private static DiagnosticDescriptor Error(string id, string title, string message) =>
        new(id, title, message, Category, DiagnosticSeverity.Error, isEnabledByDefault: true, helpLinkUri: HelpBase + id.ToLowerInvariant());

    private static DiagnosticDescriptor Warning(string id, string title, string message) =>
        new(id, title, message, Category, DiagnosticSeverity.Warning, isEnabledByDefault: true, helpLinkUri: HelpBase + id.ToLowerInvariant());
}

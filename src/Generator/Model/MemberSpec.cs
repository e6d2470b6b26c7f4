namespace EmaGen.Generator.Model;

/// <summary>How a member holds components.</summary>
internal enum MemberKind
{
    Parameter,
    Buffer,
    Module,
    ModuleArray,
    ModuleList,
}

/// <summary>How the parameters of a module type are known.</summary>
internal enum ModuleKind
{
    /// <summary>Its class is [EmaTracked]: walk it through its own generated members.</summary>
    Tracked,
    /// <summary>A TorchSharp built-in whose parameter names are in <see cref="Parsing.BuiltinModules"/>.</summary>
    Builtin,
    /// <summary>A TorchSharp module with no parameters.</summary>
    Parameterless,
    /// <summary>Only run time knows its parameters (Sequential, LSTM, an untracked class): read from its registered tree.</summary>
    Dynamic,
}

/// <summary>A module type and what the generator knows about its parameters.</summary>
/// <param name="Kind">How its parameters are known.</param>
/// <param name="TypeName">Fully qualified type name.</param>
/// <param name="ShadowTypeName">Fully qualified shadow type, or null for parameterless modules.</param>
/// <param name="ParameterNames">Built-ins: local parameter names in registration order (also the property names).</param>
/// <param name="BufferNames">Built-ins: local buffer names in registration order (also the property names).</param>
/// <param name="ReadFromRegisteredTree">Built-ins whose properties allocate: walked through the registered tree, shadow still typed.</param>
internal sealed record ModuleTypeSpec(
    ModuleKind Kind, string TypeName, string? ShadowTypeName, EquatableArray<string> ParameterNames, EquatableArray<string> BufferNames,
    bool ReadFromRegisteredTree = false);

/// <summary>One field of a tracked class that holds a parameter, buffer or submodule(s).</summary>
/// <param name="Name">Registered name: the field name, or its [ComponentName].</param>
/// <param name="MemberName">The C# field name.</param>
/// <param name="Kind">How it holds components.</param>
/// <param name="TypeName">The declared type, fully qualified.</param>
/// <param name="Ignored">Marked [EmaIgnore].</param>
/// <param name="IsNullable">Declared with a nullable annotation.</param>
/// <param name="Module">For module members, lists and arrays: the (element) module type.</param>
/// <param name="ShardDim">Shard map entry for the member's parameters: a dimension, or -1 for replicated.</param>
/// <param name="Accessor">For a private field of a base class: the generated class whose UnsafeAccessor method (named like
/// the field) returns it; null when the field is read directly.</param>
internal sealed record MemberSpec(
    string Name,
    string MemberName,
    MemberKind Kind,
    string TypeName,
    bool Ignored,
    bool IsNullable,
    ModuleTypeSpec? Module,
    int ShardDim,
    string? Accessor = null);

/// <summary>A generated nested class of UnsafeAccessor methods for the private fields of one base class.</summary>
/// <param name="ClassName">Name with type parameter list, e.g. <c>__EmaGenBase0&lt;T&gt;</c>.</param>
/// <param name="Constraints">The base class's type parameter constraints, as source (may be empty).</param>
/// <param name="SelfType">The base class as declared (its own type parameters), fully qualified.</param>
/// <param name="Fields">Each field's name and declared type (in terms of the base's type parameters).</param>
internal sealed record AccessorClassSpec(string ClassName, string Constraints, string SelfType, EquatableArray<AccessorFieldSpec> Fields);

/// <summary>One private base-class field read through an UnsafeAccessor.</summary>
internal sealed record AccessorFieldSpec(string Name, string TypeName);

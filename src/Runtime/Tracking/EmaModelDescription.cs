using System.Collections.Generic;

namespace EmaGen;

/// <summary>How a member of a tracked class contributes parameters, as the generator classified it.</summary>
public enum EmaMemberKind
{
    /// <summary>A <c>Parameter</c> field.</summary>
    Parameter,
    /// <summary>A <c>Tensor</c> field that is not a parameter: registered as a buffer, not averaged.</summary>
    Buffer,
    /// <summary>A submodule whose class is itself <see cref="EmaTrackedAttribute"/>.</summary>
    TrackedModule,
    /// <summary>A TorchSharp built-in module whose parameter names the generator knows (<c>Linear</c>, <c>LayerNorm</c>, ...).</summary>
    BuiltinModule,
    /// <summary>A TorchSharp module without parameters (activations, dropout, pooling, losses).</summary>
    ParameterlessModule,
    /// <summary>An array of submodules, registered as a <c>ModuleList</c> (names <c>blocks.0.weight</c>).</summary>
    ModuleArray,
    /// <summary>A <c>ModuleList&lt;T&gt;</c> of submodules.</summary>
    ModuleList,
    /// <summary>No longer emitted: submodules the generator cannot enumerate are now <see cref="DynamicModule"/>.</summary>
    UnknownModule,
    /// <summary>
    /// A submodule whose parameters only run time knows (a <c>Sequential</c>, <c>ModuleDict</c>, <c>ParameterList</c>,
    /// <c>LSTM</c>, <c>MultiheadAttention</c>, a <c>Transformer*</c> module, a module class without
    /// <see cref="EmaTrackedAttribute"/>): read from its registered <c>named_parameters()</c> when the manager binds.
    /// </summary>
    DynamicModule,
}

/// <summary>One member of a tracked class: its registered name, the C# member it comes from and how it is walked.</summary>
/// <param name="Name">Name as registered with TorchSharp (the field name, or its <c>[ComponentName]</c>).</param>
/// <param name="MemberName">The C# field name.</param>
/// <param name="Kind">How the member contributes parameters.</param>
/// <param name="TypeName">The member's declared type, fully qualified.</param>
/// <param name="Ignored">True when marked <see cref="EmaIgnoreAttribute"/>.</param>
/// <param name="ParameterNames">For built-in modules, the local parameter names in registration order; otherwise empty.</param>
/// <param name="ShardDim">The shard map: the dimension a sharded EMA splits this member's parameters along, or
/// <see cref="ShardLayout.Replicated"/> (from <see cref="EmaShardAttribute"/>/<see cref="EmaReplicateAttribute"/>; default 0, buffers replicated).</param>
public sealed record EmaMemberDescription(
    string Name, string MemberName, EmaMemberKind Kind, string TypeName, bool Ignored, IReadOnlyList<string> ParameterNames, int ShardDim);

/// <summary>The generator's compile-time description of a tracked class.</summary>
/// <param name="TypeName">Fully qualified class name.</param>
/// <param name="Members">Members in field order.</param>
public sealed record EmaModelDescription(string TypeName, IReadOnlyList<EmaMemberDescription> Members);

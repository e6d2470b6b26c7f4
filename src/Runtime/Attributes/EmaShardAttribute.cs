using System;

namespace EmaGen;

/// <summary>
/// How the parameters of a member (or, on the class, of every member without its own attribute) split across ranks
/// for a sharded EMA: along dimension <see cref="Dim"/>, FSDP2 <c>Shard(dim)</c> style. Parameters are sharded along
/// dimension 0 unless an attribute says otherwise; buffers are replicated.
/// </summary>
[AttributeUsage(AttributeTargets.Class | AttributeTargets.Field, Inherited = false, AllowMultiple = false)]
public sealed class EmaShardAttribute : Attribute
{
    public EmaShardAttribute(int dim = 0) => Dim = dim;

    /// <summary>The dimension split across ranks.</summary>
    public int Dim { get; }
}

/// <summary>Keeps every rank's copy of the member's parameters whole (not sharded); on the class, the default for all members.</summary>
[AttributeUsage(AttributeTargets.Class | AttributeTargets.Field, Inherited = false, AllowMultiple = false)]
public sealed class EmaReplicateAttribute : Attribute
{
}

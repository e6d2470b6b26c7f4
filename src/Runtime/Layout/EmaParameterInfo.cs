using System;
using TorchSharp;

namespace EmaGen;

/// <summary>Why a parameter of the model has no EMA shadow.</summary>
public enum EmaExclusion
{
    /// <summary>The parameter is averaged.</summary>
    None,
    /// <summary><c>requires_grad</c> was false when the manager was built (a frozen parameter).</summary>
    Frozen,
    /// <summary>The member is marked <see cref="EmaIgnoreAttribute"/>.</summary>
    Ignored,
    /// <summary>A buffer, and <see cref="EmaOptions.TrackBuffers"/> is off.</summary>
    BufferNotTracked,
    /// <summary>Left out by <see cref="EmaOptions.Include"/> or <see cref="EmaOptions.Exclude"/>.</summary>
    Filtered,
}

/// <summary>The one rule both managers bind with: which slots are averaged, and why the others are not.</summary>
internal static class EmaExclusions
{
    /// <summary>Why the (non-null) tensor in <paramref name="slot"/> is not averaged, or <see cref="EmaExclusion.None"/>.</summary>
    public static EmaExclusion Of(in ParameterSlot slot, bool trackBuffers, NameFilter? filter)
    {
        // The filter sees every name it may match (frozen and ignored ones too), so "matches nothing" means the model.
        bool kept = filter is null || slot.IsBuffer && !trackBuffers || filter.Accepts(slot.FullName);
        return slot.Ignored ? EmaExclusion.Ignored
            : slot.IsBuffer ? (trackBuffers ? (kept ? EmaExclusion.None : EmaExclusion.Filtered) : EmaExclusion.BufferNotTracked)
            : !slot.Tensor!.requires_grad ? EmaExclusion.Frozen
            : kept ? EmaExclusion.None : EmaExclusion.Filtered;
    }

    /// <summary>The words a typed shadow property throws with for a slot without a shadow (null: the model holds no tensor there).</summary>
    public static string Describe(EmaExclusion? exclusion) => exclusion switch
    {
        null => "the model holds no such tensor (null)",
        EmaExclusion.Frozen => "it was frozen (requires_grad false) when the EMA manager was built",
        EmaExclusion.BufferNotTracked => "buffers are not tracked (set EmaOptions.TrackBuffers)",
        EmaExclusion.Filtered => "EmaOptions.Include/Exclude leave it out",
        _ => "",
    };
}

/// <summary>
/// One parameter or buffer of the bound model, as the manager saw it at construction. Two infos are equal when every
/// property is (the shape element by element).
/// </summary>
public sealed record EmaParameterInfo
{
    internal EmaParameterInfo(
        string name, long[] shape, torch.ScalarType dType, torch.ScalarType shadowDType, torch.Device device, EmaExclusion exclusion,
        bool isBuffer = false, int shardDim = 0)
    {
        (Name, Shape, DType, ShadowDType, Device, Exclusion, IsBuffer, ShardDim) = (name, shape, dType, shadowDType, device, exclusion, isBuffer, shardDim);
    }

    /// <summary>Full dotted name, identical to TorchSharp's <c>named_parameters()</c> (or <c>named_buffers()</c>).</summary>
    public string Name { get; internal init; }

    /// <summary>Shape at construction.</summary>
    public long[] Shape { get; internal init; }

    /// <summary>Element type of the parameter.</summary>
    public torch.ScalarType DType { get; internal init; }

    /// <summary>Element type of its shadow: fp32 for bf16/fp16 parameters unless <see cref="EmaOptions.LowPrecisionShadow"/>, else the parameter's.</summary>
    public torch.ScalarType ShadowDType { get; internal init; }

    /// <summary>Device of the parameter (and of its shadow).</summary>
    public torch.Device Device { get; internal init; }

    /// <summary>Why it is not averaged, or <see cref="EmaExclusion.None"/>.</summary>
    public EmaExclusion Exclusion { get; internal init; }

    /// <summary>True for a buffer (a registered tensor that is not a parameter).</summary>
    public bool IsBuffer { get; internal init; }

    /// <summary>From the generated shard map: the dimension a sharded EMA splits across ranks, or <see cref="ShardLayout.Replicated"/>.</summary>
    public int ShardDim { get; internal init; }

    /// <summary>True when the parameter has a shadow (integer and bool buffers' shadows are copies, never averaged).</summary>
    public bool Tracked => Exclusion == EmaExclusion.None;

    /// <summary>Number of elements.</summary>
    public long Numel => Shapes.Numel(Shape);

    internal string ShapeText => Shapes.Text(Shape);

    public bool Equals(EmaParameterInfo? other) =>
        other is not null && Name == other.Name && Shapes.Equal(Shape, other.Shape) && DType == other.DType && ShadowDType == other.ShadowDType
        && Device.type == other.Device.type && Device.index == other.Device.index && Exclusion == other.Exclusion && IsBuffer == other.IsBuffer
        && ShardDim == other.ShardDim;

    public override int GetHashCode() => HashCode.Combine(Name, Shapes.Hash(Shape), DType, ShadowDType, Device.type, Device.index, Exclusion, HashCode.Combine(IsBuffer, ShardDim));

    private bool PrintMembers(System.Text.StringBuilder builder)
    {
        builder.Append($"Name = {Name}, Shape = {ShapeText}, DType = {DType}, ShadowDType = {ShadowDType}, Device = {Device}, Exclusion = {Exclusion}, IsBuffer = {IsBuffer}, ShardDim = {ShardDim}");
        return true;
    }
}

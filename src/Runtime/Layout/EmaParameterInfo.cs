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
}

/// <summary>The one rule both managers bind with: which slots are averaged, and why the others are not.</summary>
internal static class EmaExclusions
{
    /// <summary>Why the (non-null) tensor in <paramref name="slot"/> is not averaged, or <see cref="EmaExclusion.None"/>.</summary>
    public static EmaExclusion Of(in ParameterSlot slot, bool trackBuffers) =>
        slot.Ignored ? EmaExclusion.Ignored
        : slot.IsBuffer ? (trackBuffers ? EmaExclusion.None : EmaExclusion.BufferNotTracked)
        : slot.Tensor!.requires_grad ? EmaExclusion.None : EmaExclusion.Frozen;

    /// <summary>The words a typed shadow property throws with for a slot without a shadow (null: the model holds no tensor there).</summary>
    public static string Describe(EmaExclusion? exclusion) => exclusion switch
    {
        null => "the model holds no such tensor (null)",
        EmaExclusion.Frozen => "it was frozen (requires_grad false) when the EMA manager was built",
        EmaExclusion.BufferNotTracked => "buffers are not tracked (set EmaOptions.TrackBuffers)",
        _ => "",
    };
}

/// <summary>One parameter or buffer of the bound model, as the manager saw it at construction.</summary>
/// <param name="Name">Full dotted name, identical to TorchSharp's <c>named_parameters()</c> (or <c>named_buffers()</c>).</param>
/// <param name="Shape">Shape at construction.</param>
/// <param name="DType">Element type of the parameter.</param>
/// <param name="ShadowDType">Element type of its shadow: fp32 for bf16/fp16 parameters unless <see cref="EmaOptions.LowPrecisionShadow"/>, else the parameter's.</param>
/// <param name="Device">Device of the parameter (and of its shadow).</param>
/// <param name="Exclusion">Why it is not averaged, or <see cref="EmaExclusion.None"/>.</param>
/// <param name="IsBuffer">True for a buffer (a registered tensor that is not a parameter).</param>
/// <param name="ShardDim">From the generated shard map: the dimension a sharded EMA splits across ranks, or <see cref="ShardLayout.Replicated"/>.</param>
public sealed record EmaParameterInfo(
    string Name, long[] Shape, torch.ScalarType DType, torch.ScalarType ShadowDType, torch.Device Device, EmaExclusion Exclusion,
    bool IsBuffer = false, int ShardDim = 0)
{
    /// <summary>True when the shadow is a plain copy (integer and bool buffers are copied, never averaged).</summary>
    public bool IsCopied => !DTypes.IsFloatingPoint(DType);

    /// <summary>True when the parameter has a shadow.</summary>
    public bool Tracked => Exclusion == EmaExclusion.None;

    /// <summary>Number of elements.</summary>
    public long Numel
    {
        get
        {
            long n = 1;
            foreach (var d in Shape) n = checked(n * d);
            return n;
        }
    }

    internal string ShapeText => "[" + string.Join(", ", Shape) + "]";
}

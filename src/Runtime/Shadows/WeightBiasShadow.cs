using TorchSharp;

namespace EmaGen.Shadows;

/// <summary>Shadow of a built-in module with <c>weight</c> and optional <c>bias</c> (Linear, Bilinear, Conv*, ConvTranspose*, LayerNorm, GroupNorm, BatchNorm*, InstanceNorm*).</summary>
public sealed class WeightBiasShadow
{
    /// <summary>Built by generated code.</summary>
    public WeightBiasShadow(EmaShadowEntry weight, EmaShadowEntry bias)
    {
        WeightEntry = weight;
        BiasEntry = bias;
    }

    /// <summary>The <c>weight</c> slot (tracked or not).</summary>
    public EmaShadowEntry WeightEntry { get; }

    /// <summary>The <c>bias</c> slot (tracked or not).</summary>
    public EmaShadowEntry BiasEntry { get; }

    /// <summary>Shadow of <c>weight</c>.</summary>
    public torch.Tensor weight => WeightEntry.Tensor;

    /// <summary>Shadow of <c>bias</c>; throws when the module has no bias or it is not averaged.</summary>
    public torch.Tensor bias => BiasEntry.Tensor;
}

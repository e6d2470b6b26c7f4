using System.ComponentModel;
using TorchSharp;

namespace EmaGen.CompilerServices;

/// <summary>Shadow of a built-in module with <c>weight</c> and optional <c>bias</c> (Linear, Bilinear, Conv*, ConvTranspose*, LayerNorm, GroupNorm, BatchNorm*, InstanceNorm*).</summary>
[EditorBrowsable(EditorBrowsableState.Never)]
public sealed class WeightBiasShadow : BuiltinModuleShadow
{
    /// <summary>Built by generated code.</summary>
    public WeightBiasShadow(EmaShadowEntry weight, EmaShadowEntry bias)
        : base(weight, bias)
    {
    }

    /// <summary>Shadow of <c>weight</c>.</summary>
    public torch.Tensor weight => At(0);

    /// <summary>Shadow of <c>bias</c>; throws when the module has no bias or it is not averaged.</summary>
    public torch.Tensor bias => At(1);
}

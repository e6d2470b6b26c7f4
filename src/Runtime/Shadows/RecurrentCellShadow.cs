using System.ComponentModel;
using TorchSharp;

namespace EmaGen.CompilerServices;

/// <summary>
/// Shadow of a recurrent cell (RNNCell, LSTMCell, GRUCell): <c>weight_ih</c>, <c>weight_hh</c>, <c>bias_ih</c>,
/// <c>bias_hh</c>. Each property throws, naming the slot, when it has no shadow; <see cref="BuiltinModuleShadow.Entry"/>
/// says whether it has one.
/// </summary>
[EditorBrowsable(EditorBrowsableState.Never)]
public sealed class RecurrentCellShadow : BuiltinModuleShadow
{
    /// <summary>Built by generated code, in TorchSharp's registration order.</summary>
    public RecurrentCellShadow(EmaShadowEntry weightIh, EmaShadowEntry weightHh, EmaShadowEntry biasIh, EmaShadowEntry biasHh)
        : base(weightIh, weightHh, biasIh, biasHh)
    {
    }

    public torch.Tensor weight_ih => At(0);
    public torch.Tensor weight_hh => At(1);
    public torch.Tensor bias_ih => At(2);
    public torch.Tensor bias_hh => At(3);
}

using TorchSharp;

namespace EmaGen.Shadows;

/// <summary>Shadow of a recurrent cell (RNNCell, LSTMCell, GRUCell): <c>weight_ih</c>, <c>weight_hh</c>, <c>bias_ih</c>, <c>bias_hh</c>.</summary>
public sealed class RecurrentCellShadow
{
    /// <summary>Built by generated code, in TorchSharp's registration order.</summary>
    public RecurrentCellShadow(EmaShadowEntry weightIh, EmaShadowEntry weightHh, EmaShadowEntry biasIh, EmaShadowEntry biasHh)
    {
        WeightIhEntry = weightIh;
        WeightHhEntry = weightHh;
        BiasIhEntry = biasIh;
        BiasHhEntry = biasHh;
    }

    /// <summary>The <c>weight_ih</c> slot.</summary>
    public EmaShadowEntry WeightIhEntry { get; }
    /// <summary>The <c>weight_hh</c> slot.</summary>
    public EmaShadowEntry WeightHhEntry { get; }
    /// <summary>The <c>bias_ih</c> slot.</summary>
    public EmaShadowEntry BiasIhEntry { get; }
    /// <summary>The <c>bias_hh</c> slot.</summary>
    public EmaShadowEntry BiasHhEntry { get; }

    /// <summary>Shadow of <c>weight_ih</c>.</summary>
    public torch.Tensor weight_ih => WeightIhEntry.Tensor;
    /// <summary>Shadow of <c>weight_hh</c>.</summary>
    public torch.Tensor weight_hh => WeightHhEntry.Tensor;
    /// <summary>Shadow of <c>bias_ih</c>.</summary>
    public torch.Tensor bias_ih => BiasIhEntry.Tensor;
    /// <summary>Shadow of <c>bias_hh</c>.</summary>
    public torch.Tensor bias_hh => BiasHhEntry.Tensor;
}

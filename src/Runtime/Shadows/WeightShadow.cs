using System.ComponentModel;
using TorchSharp;

namespace EmaGen.CompilerServices;

/// <summary>Shadow of a built-in module with a single <c>weight</c> (Embedding, EmbeddingBag, PReLU).</summary>
[EditorBrowsable(EditorBrowsableState.Never)]
public sealed class WeightShadow : BuiltinModuleShadow
{
    /// <summary>Built by generated code.</summary>
    public WeightShadow(EmaShadowEntry weight)
        : base(weight)
    {
    }

    /// <summary>Shadow of <c>weight</c>.</summary>
    public torch.Tensor weight => At(0);
}

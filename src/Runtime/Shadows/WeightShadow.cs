using TorchSharp;

namespace EmaGen.Shadows;

/// <summary>Shadow of a built-in module with a single <c>weight</c> (Embedding, EmbeddingBag, PReLU).</summary>
public sealed class WeightShadow : BuiltinModuleShadow
{
    /// <summary>Built by generated code.</summary>
    public WeightShadow(EmaShadowEntry weight)
        : base(weight)
    {
    }

    /// <summary>The <c>weight</c> slot (tracked or not).</summary>
    public EmaShadowEntry WeightEntry => Entries[0];

    /// <summary>Shadow of <c>weight</c>.</summary>
    public torch.Tensor weight => At(0);
}

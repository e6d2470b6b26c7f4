using System.Collections.Generic;
using System.Collections.Immutable;

namespace EmaGen.Generator.Parsing;

/// <summary>
/// TorchSharp 0.107 built-in modules whose parameters the generator knows, keyed by the metadata name of the class
/// that declares them (subclasses such as Conv2d or BatchNorm1d are found through their base). Names and order are
/// TorchSharp's registration order, checked against <c>named_parameters()</c> by the runtime tests.
/// </summary>
internal static class BuiltinModules
{
    private const string WeightBias = "global::EmaGen.Shadows.WeightBiasShadow";
    private const string Weight = "global::EmaGen.Shadows.WeightShadow";
    private const string RecurrentCell = "global::EmaGen.Shadows.RecurrentCellShadow";

    private static readonly ImmutableArray<string> WeightAndBias = ImmutableArray.Create("weight", "bias");
    private static readonly ImmutableArray<string> WeightOnly = ImmutableArray.Create("weight");
    private static readonly ImmutableArray<string> CellWeights = ImmutableArray.Create("weight_ih", "weight_hh", "bias_ih", "bias_hh");

    public static readonly IReadOnlyDictionary<string, (string ShadowType, ImmutableArray<string> Parameters)> ByDeclaringType =
        new Dictionary<string, (string, ImmutableArray<string>)>
        {
            ["TorchSharp.Modules.Linear"] = (WeightBias, WeightAndBias),
            ["TorchSharp.Modules.Bilinear"] = (WeightBias, WeightAndBias),
            ["TorchSharp.Modules.Convolution"] = (WeightBias, WeightAndBias),
            ["TorchSharp.Modules.LayerNorm"] = (WeightBias, WeightAndBias),
            ["TorchSharp.Modules.GroupNorm"] = (WeightBias, WeightAndBias),
            ["TorchSharp.Modules.NormBase"] = (WeightBias, WeightAndBias),
            ["TorchSharp.Modules.Embedding"] = (Weight, WeightOnly),
            ["TorchSharp.Modules.EmbeddingBag"] = (Weight, WeightOnly),
            ["TorchSharp.Modules.PReLU"] = (Weight, WeightOnly),
            ["TorchSharp.Modules.RNNCell"] = (RecurrentCell, CellWeights),
            ["TorchSharp.Modules.LSTMCell"] = (RecurrentCell, CellWeights),
            ["TorchSharp.Modules.GRUCell"] = (RecurrentCell, CellWeights),
        };

    /// <summary>
    /// True for TorchSharp base classes whose subclasses hold no parameters: activations, dropout, pooling, padding
    /// (<c>TorchSharp.Modules.ParameterLessModule`N</c>) and losses (<c>TorchSharp.Loss`N</c>, whose class weights are buffers).
    /// </summary>
    public static bool IsParameterlessBase(string containingNamespace, string name) =>
        (containingNamespace == "TorchSharp.Modules" && name == "ParameterLessModule")
        || (containingNamespace == "TorchSharp" && (name == "Loss" || name == "WeightedLoss"));
}

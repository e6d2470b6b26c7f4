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
    private const string WeightBias = "global::EmaGen.CompilerServices.WeightBiasShadow";
    private const string Norm = "global::EmaGen.CompilerServices.NormShadow";
    private const string Weight = "global::EmaGen.CompilerServices.WeightShadow";
    private const string RecurrentCell = "global::EmaGen.CompilerServices.RecurrentCellShadow";

    private static readonly ImmutableArray<string> None = ImmutableArray<string>.Empty;
    private static readonly ImmutableArray<string> WeightAndBias = ImmutableArray.Create("weight", "bias");
    private static readonly ImmutableArray<string> WeightOnly = ImmutableArray.Create("weight");
    private static readonly ImmutableArray<string> CellWeights = ImmutableArray.Create("weight_ih", "weight_hh", "bias_ih", "bias_hh");
    private static readonly ImmutableArray<string> RunningStats = ImmutableArray.Create("running_mean", "running_var", "num_batches_tracked");

    /// <summary>Shadow type, parameter names and buffer names (each in registration order) of a built-in.</summary>
    public static readonly IReadOnlyDictionary<string, (string ShadowType, ImmutableArray<string> Parameters, ImmutableArray<string> Buffers)> ByDeclaringType =
        new Dictionary<string, (string, ImmutableArray<string>, ImmutableArray<string>)>
        {
            ["TorchSharp.Modules.Linear"] = (WeightBias, WeightAndBias, None),
            ["TorchSharp.Modules.Bilinear"] = (WeightBias, WeightAndBias, None),
            ["TorchSharp.Modules.Convolution"] = (WeightBias, WeightAndBias, None),
            ["TorchSharp.Modules.LayerNorm"] = (WeightBias, WeightAndBias, None),
            ["TorchSharp.Modules.GroupNorm"] = (WeightBias, WeightAndBias, None),
            // BatchNorm*, InstanceNorm*: affine weight and bias, plus running statistics as buffers.
            ["TorchSharp.Modules.NormBase"] = (Norm, WeightAndBias, RunningStats),
            ["TorchSharp.Modules.Embedding"] = (Weight, WeightOnly, None),
            ["TorchSharp.Modules.EmbeddingBag"] = (Weight, WeightOnly, None),
            ["TorchSharp.Modules.PReLU"] = (Weight, WeightOnly, None),
            ["TorchSharp.Modules.RNNCell"] = (RecurrentCell, CellWeights, None),
            ["TorchSharp.Modules.LSTMCell"] = (RecurrentCell, CellWeights, None),
            ["TorchSharp.Modules.GRUCell"] = (RecurrentCell, CellWeights, None),
        };

    /// <summary>
    /// Built-ins backed by a LibTorch module whose parameter properties build a new wrapper on every read (measured in
    /// 0.107: 48 bytes per read). The generated walk reads them from the registered tree instead, as for dynamic
    /// members, so the per-step update allocates nothing; their shadows stay typed.
    /// </summary>
    public static readonly ImmutableHashSet<string> ReadFromRegisteredTree = ImmutableHashSet.Create(
        "TorchSharp.Modules.Embedding", "TorchSharp.Modules.EmbeddingBag",
        "TorchSharp.Modules.RNNCell", "TorchSharp.Modules.LSTMCell", "TorchSharp.Modules.GRUCell");

    /// <summary>
    /// True for TorchSharp base classes whose subclasses hold no parameters: activations, dropout, pooling, padding
    /// (<c>TorchSharp.Modules.ParameterLessModule`N</c>) and losses (<c>TorchSharp.Loss`N</c>, whose class weights are buffers).
    /// </summary>
    public static bool IsParameterlessBase(string containingNamespace, string name) =>
        (containingNamespace == "TorchSharp.Modules" && name == "ParameterLessModule")
        || (containingNamespace == "TorchSharp" && (name == "Loss" || name == "WeightedLoss"));
}

using TorchSharp;

namespace EmaGen;

/// <summary>One visit of a parameter or buffer slot: a named tensor, or an empty slot (null).</summary>
internal readonly record struct ParameterSlot(string FullName, string LocalName, torch.Tensor? Tensor, bool Ignored, bool IsBuffer, int ShardDim);

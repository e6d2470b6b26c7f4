using TorchSharp;

namespace EmaGen;

/// <summary>
/// One visit of a parameter or buffer slot: a named tensor, or an empty slot (null). <paramref name="DynamicGroup"/> is
/// the index of the dynamic module the slot was read from (<see cref="SlotCollector.Groups"/>), or -1 for a slot the
/// generated code names itself.
/// </summary>
internal readonly record struct ParameterSlot(string FullName, string LocalName, torch.Tensor? Tensor, bool Ignored, bool IsBuffer, int ShardDim, int DynamicGroup = -1);

/// <summary>A dynamic module met by a <see cref="SlotCollector"/>: its full name, whether it is ignored, and its slots [Start, End).</summary>
internal readonly record struct DynamicGroup(string FullName, bool Ignored, int Start, int End);

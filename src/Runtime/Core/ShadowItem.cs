using System;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// One averaged tensor of a manager: its slot in the model walk, the parameter it averages (global shape), the box of
/// it this manager keeps (the whole tensor in a dense manager, this rank's box in a sharded one) and what a step needs
/// to blend that box. Built once at bind; a step reads the items in order.
/// </summary>
internal readonly struct ShadowItem
{
    /// <summary>Index of the slot in the model walk.</summary>
    public required int Slot { get; init; }

    /// <summary>The averaged parameter or buffer, with its global shape.</summary>
    public required EmaParameterInfo Info { get; init; }

    /// <summary>Where the box starts in the global tensor, per dimension.</summary>
    public required long[] Offsets { get; init; }

    /// <summary>The box's shape (the shadow's shape).</summary>
    public required long[] Sizes { get; init; }

    /// <summary>The live tensor is the box itself (a whole tensor, or an FSDP-style local shard): no view is needed.</summary>
    public required bool LiveIsBox { get; init; }

    /// <summary>Where the box starts in the live tensor's data, in bytes (a dim-0 box is one contiguous range).</summary>
    public required long ParameterOffsetBytes { get; init; }

    /// <summary>Elements in the box.</summary>
    public required long Numel { get; init; }

    public required KernelKind Kernel { get; init; }

    /// <summary>The raw CPU kernels can take the box, as far as bind can tell (contiguity is learnt each step).</summary>
    public required bool RawCapable { get; init; }

    /// <summary>The box of <paramref name="live"/> this item averages, as a new view (or alias) the caller disposes.</summary>
    public torch.Tensor BoxOf(torch.Tensor live) =>
        LiveIsBox || Info.ShardDim == ShardLayout.Replicated || live.shape.Length == 0
            ? live.alias()
            : live.narrow(Info.ShardDim, Offsets[Info.ShardDim], Sizes[Info.ShardDim]);

    /// <summary>True when the box is only part of the tensor (a shard).</summary>
    public bool IsPartial => !Sizes.AsSpan().SequenceEqual(Info.Shape);
}

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
    public ShadowItem(int slot, EmaParameterInfo info, long[] offsets, long[] sizes, bool liveIsBox, long parameterOffsetBytes, long numel,
        KernelKind kernel, bool rawCapable)
    {
        Slot = slot;
        Info = info;
        Offsets = offsets;
        Sizes = sizes;
        LiveIsBox = liveIsBox;
        ParameterOffsetBytes = parameterOffsetBytes;
        Numel = numel;
        Kernel = kernel;
        RawCapable = rawCapable;
    }

    /// <summary>Index of the slot in the model walk.</summary>
    public readonly int Slot;

    /// <summary>The averaged parameter or buffer, with its global shape.</summary>
    public readonly EmaParameterInfo Info;

    /// <summary>Where the box starts in the global tensor, per dimension.</summary>
    public readonly long[] Offsets;

    /// <summary>The box's shape (the shadow's shape).</summary>
    public readonly long[] Sizes;

    /// <summary>The live tensor is the box itself (a whole tensor, or an FSDP-style local shard): no view is needed.</summary>
    public readonly bool LiveIsBox;

    /// <summary>Where the box starts in the live tensor's data, in bytes (a dim-0 box is one contiguous range).</summary>
    public readonly long ParameterOffsetBytes;

    /// <summary>Elements in the box.</summary>
    public readonly long Numel;

    public readonly KernelKind Kernel;

    /// <summary>The raw CPU kernels can take the box, as far as bind can tell (contiguity is learnt each step).</summary>
    public readonly bool RawCapable;

    /// <summary>The box of <paramref name="live"/> this item averages, as a new view (or alias) the caller disposes.</summary>
    public torch.Tensor BoxOf(torch.Tensor live) =>
        LiveIsBox || Info.ShardDim == ShardLayout.Replicated || live.shape.Length == 0
            ? live.alias()
            : live.narrow(Info.ShardDim, Offsets[Info.ShardDim], Sizes[Info.ShardDim]);

    /// <summary>Every rank keeps the whole tensor (a replicated member); a save stores it once.</summary>
    public bool Replicated => Info.ShardDim == ShardLayout.Replicated;

    /// <summary>True when the box is only part of the tensor (a shard).</summary>
    public bool IsPartial => !Sizes.AsSpan().SequenceEqual(Info.Shape);
}

using System;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// What a step's backends write and read, in the engine's numbering: per profile the arena (flat shadow per group, and
/// for the first the packed parameters) and each averaged tensor's ("item's") shadow; per item its element count and
/// kernel; and the live tensors and data pointers the step's check found (<see cref="LiveSlots"/>).
/// </summary>
internal sealed class UpdateTargets(ShadowArena[] arenas, torch.Tensor[][] shadow, IntPtr[][] shadowPointer, long[] count,
    KernelKind[] kernel, LiveSlots live, int[] slotOfItem)
{
    /// <summary>One arena per profile; only the first packs parameters.</summary>
    public ShadowArena[] Arenas { get; } = arenas;

    /// <summary>Per profile, then per item: the shadow view.</summary>
    public torch.Tensor[][] Shadow { get; } = shadow;

    /// <summary>Per profile, then per item: the shadow's data (CPU shadows; zero elsewhere). Shadows are never re-pointed.</summary>
    public IntPtr[][] ShadowPointer { get; } = shadowPointer;

    public long[] Count { get; } = count;

    public KernelKind[] Kernel { get; } = kernel;

    /// <summary>The live tensor of <paramref name="item"/> at the last check.</summary>
    public torch.Tensor Tensor(int item) => live.Tensor(slotOfItem[item])!;

    /// <summary>The live data pointer of <paramref name="item"/> at the last check.</summary>
    public IntPtr Pointer(int item) => live.Pointer(slotOfItem[item]);
}

using System;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// What a step's backends write and read, in the engine's numbering: per profile the arena (flat shadow per group, and
/// for the first the packed parameters) and each averaged tensor's ("item's") shadow; per item its element count and
/// kernel; and the live tensors and data pointers the step's check found (<see cref="LiveSlots"/>).
/// </summary>
internal sealed class UpdateTargets
{
    private readonly LiveSlots _live;
    private readonly int[] _slotOfItem;

    public UpdateTargets(ShadowArena[] arenas, torch.Tensor[][] shadow, IntPtr[][] shadowPointer, long[] count, KernelKind[] kernel, LiveSlots live, int[] slotOfItem)
    {
        Arenas = arenas;
        Shadow = shadow;
        ShadowPointer = shadowPointer;
        Count = count;
        Kernel = kernel;
        _live = live;
        _slotOfItem = slotOfItem;
    }

    /// <summary>One arena per profile; only the first packs parameters.</summary>
    public ShadowArena[] Arenas { get; }

    /// <summary>Per profile, then per item: the shadow view.</summary>
    public torch.Tensor[][] Shadow { get; }

    /// <summary>Per profile, then per item: the shadow's data (CPU shadows; zero elsewhere). Shadows are never re-pointed.</summary>
    public IntPtr[][] ShadowPointer { get; }

    public long[] Count { get; }

    public KernelKind[] Kernel { get; }

    /// <summary>The live tensor of <paramref name="item"/> at the last check.</summary>
    public torch.Tensor Tensor(int item) => _live.Tensor(_slotOfItem[item])!;

    /// <summary>The live data pointer of <paramref name="item"/> at the last check.</summary>
    public IntPtr Pointer(int item) => _live.Pointer(_slotOfItem[item]);
}

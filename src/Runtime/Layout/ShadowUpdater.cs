using System;
using TorchSharp;
using TorchSharp.Modules;

namespace EmaGen;

/// <summary>
/// The per-step visitor: walks the live model's parameter fields (no name building, no dictionary lookups) and moves
/// each shadow toward its parameter with one in-place <c>lerp_</c>: <c>ema += w * (p - ema)</c> with w = 1 - decay,
/// which equals <c>decay * ema + (1 - decay) * p</c> and is exact at decay 0 and 1.
/// </summary>
internal struct ShadowUpdater : IEmaParameterVisitor
{
    private readonly torch.Tensor?[] _shadowBySlot;
    private readonly Func<torch.Tensor, torch.Tensor> _weightFor;
    private int _slot;

    /// <param name="shadowBySlot">The shadow of each visit slot, null where the slot is not averaged.</param>
    /// <param name="weightFor">The cached 0-dim weight (1 - decay) for a shadow's dtype and device.</param>
    public ShadowUpdater(torch.Tensor?[] shadowBySlot, Func<torch.Tensor, torch.Tensor> weightFor)
    {
        _shadowBySlot = shadowBySlot;
        _weightFor = weightFor;
        _slot = 0;
    }

    public void EnterModule(string name, bool ignored) { }

    public void EnterIndex(int index) { }

    public void ExitModule() { }

    // SlotValidator has already checked count, names, presence and sizes for this model.
    public void Parameter(string name, Parameter? parameter, bool ignored)
    {
        var shadow = _shadowBySlot[_slot++];
        if (shadow is null) return;
        InPlace.Release(shadow.lerp_(parameter!, _weightFor(shadow)), shadow);
    }
}

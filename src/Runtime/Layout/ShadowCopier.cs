using System;
using TorchSharp;
using TorchSharp.Modules;

namespace EmaGen;

/// <summary>Writes each shadow into the matching parameter of a model (the export direction of <see cref="ShadowUpdater"/>).</summary>
internal struct ShadowCopier : IEmaParameterVisitor
{
    private readonly torch.Tensor?[] _shadowBySlot;
    private int _slot;

    public ShadowCopier(torch.Tensor?[] shadowBySlot)
    {
        _shadowBySlot = shadowBySlot;
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
        if (!parameter!.shape.AsSpan().SequenceEqual(shadow.shape))
        {
            throw new InvalidOperationException(
                $"Parameter '{name}' has shape [{string.Join(", ", parameter.shape)}], its shadow [{string.Join(", ", shadow.shape)}].");
        }
        InPlace.Release(parameter.copy_(shadow), parameter);
    }
}

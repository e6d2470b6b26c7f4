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

    public readonly int SlotsSeen => _slot;

    public void EnterModule(string name, bool ignored) { }

    public void EnterIndex(int index) { }

    public void ExitModule() { }

    public void Parameter(string name, Parameter? parameter, bool ignored)
    {
        int slot = _slot++;
        if (slot >= _shadowBySlot.Length)
        {
            throw new InvalidOperationException($"The target model has more parameter slots than the EMA layout (extra slot '{name}').");
        }
        var shadow = _shadowBySlot[slot];
        if (shadow is null) return;
        if (parameter is null)
        {
            throw new InvalidOperationException($"The target model holds no parameter in averaged slot {slot} ('{name}').");
        }
        if (!parameter.shape.AsSpan().SequenceEqual(shadow.shape))
        {
            throw new InvalidOperationException(
                $"Parameter slot {slot} ('{name}') has shape [{string.Join(", ", parameter.shape)}], the shadow [{string.Join(", ", shadow.shape)}].");
        }
        InPlace.Release(parameter.copy_(shadow), parameter);
    }
}

using System;
using TorchSharp;
using TorchSharp.Modules;

namespace EmaGen;

/// <summary>Writes each shadow into the matching parameter of a model (the export direction of an update).</summary>
internal struct ShadowCopier : IEmaParameterVisitor
{
    private readonly ParameterSlot[] _slots;
    private readonly int[] _parameterOfSlot;
    private readonly ShadowArena _arena;
    private int _slot;

    public ShadowCopier(ParameterSlot[] slots, int[] parameterOfSlot, ShadowArena arena)
    {
        _slots = slots;
        _parameterOfSlot = parameterOfSlot;
        _arena = arena;
        _slot = 0;
    }

    public void EnterModule(string name, bool ignored) { }

    public void EnterIndex(int index) { }

    public void ExitModule() { }

    public void Parameter(string name, Parameter? parameter, bool ignored) => Copy(parameter);

    public void Buffer(string name, torch.Tensor? buffer, bool ignored) => Copy(buffer);

    // The manager has already checked count, names, presence and sizes for this model.
    private void Copy(torch.Tensor? target)
    {
        int slot = _slot++;
        int p = _parameterOfSlot[slot];
        var shadow = p >= 0 ? _arena[p] : null;
        if (shadow is null) return;
        if (!target!.shape.AsSpan().SequenceEqual(shadow.shape))
        {
            throw new InvalidOperationException(
                $"'{_slots[slot].FullName}' has shape [{string.Join(", ", target.shape)}], its shadow [{string.Join(", ", shadow.shape)}].");
        }
        InPlace.Release(target.copy_(shadow), target);
    }
}

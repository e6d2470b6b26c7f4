using System;
using TorchSharp.Modules;

namespace EmaGen;

/// <summary>
/// Checks, before anything is written, that a model still has the parameter slots the manager recorded: same count,
/// same local names, same presence and element counts. Without it a list that grew would shift every later slot onto
/// the wrong shadow, and a broadcastable mismatch would even be written silently.
/// </summary>
internal struct SlotValidator : IEmaParameterVisitor
{
    private readonly ParameterSlot[] _slots;
    private readonly long[] _numel;
    private int _slot;

    /// <param name="slots">The slots recorded at construction.</param>
    /// <param name="numel">Element count of each slot's parameter, -1 where the slot was empty.</param>
    public SlotValidator(ParameterSlot[] slots, long[] numel)
    {
        _slots = slots;
        _numel = numel;
        _slot = 0;
    }

    public void EnterModule(string name, bool ignored) { }

    public void EnterIndex(int index) { }

    public void ExitModule() { }

    public void Parameter(string name, Parameter? parameter, bool ignored)
    {
        int slot = _slot++;
        if (slot >= _slots.Length)
        {
            throw new InvalidOperationException(
                $"The model has more parameter slots than the {_slots.Length} recorded when the EMA manager was built (extra slot '{name}').");
        }
        var recorded = _slots[slot];
        if (!string.Equals(recorded.LocalName, name, StringComparison.Ordinal))
        {
            throw new InvalidOperationException(
                $"The model's parameter slot {slot} is '{name}', but the EMA manager recorded '{recorded.FullName}' there; the module tree changed.");
        }
        long expected = _numel[slot];
        if ((parameter is null) != (expected < 0))
        {
            throw new InvalidOperationException(
                $"Parameter '{recorded.FullName}' is {(parameter is null ? "now null" : "now present")} in the model, unlike when the EMA manager was built.");
        }
        if (parameter is not null && parameter.numel() != expected)
        {
            throw new InvalidOperationException(
                $"Parameter '{recorded.FullName}' has {parameter.numel()} elements, but {expected} when the EMA manager was built.");
        }
    }

    public readonly void EnsureComplete()
    {
        if (_slot != _slots.Length)
        {
            throw new InvalidOperationException(
                $"The model has {_slot} parameter slots, but had {_slots.Length} when the EMA manager was built.");
        }
    }
}

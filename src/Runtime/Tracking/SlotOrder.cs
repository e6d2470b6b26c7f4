using System;

namespace EmaGen;

/// <summary>
/// The two checks every walk that consumes recorded slots in visit order makes (the per-step check in
/// <see cref="LiveSlots"/> and the typed-shadow build in <see cref="EmaShadowBuilder"/>), with one wording.
/// </summary>
internal static class SlotOrder
{
    /// <summary>Throws when the walk reached slot <paramref name="slot"/> but only <paramref name="count"/> were recorded.</summary>
    public static void ThrowIfBeyond(int slot, int count, string name)
    {
        if (slot >= count)
        {
            throw new InvalidOperationException(
                $"The model has more parameter slots than the {count} recorded when the EMA manager was built (extra slot '{name}').");
        }
    }

    /// <summary>Throws when slot <paramref name="slot"/> is now called <paramref name="name"/> instead of its recorded local name.</summary>
    public static void ThrowIfRenamed(int slot, string name, string recordedLocalName, string recordedFullName)
    {
        if (!string.Equals(recordedLocalName, name, StringComparison.Ordinal))
        {
            throw new InvalidOperationException(
                $"The model's parameter slot {slot} is '{name}', but the EMA manager recorded '{recordedFullName}' there; the module tree changed.");
        }
    }
}

using System;
using System.Collections.Generic;

namespace EmaGen;

/// <summary>
/// Feeds the generated <c>CreateShadow</c> the shadow entries in visit order. The generated code walks the model in the
/// same order as <c>VisitParameters</c>; every call names the local parameter, and a mismatch (the model changed shape
/// between the two walks) is an error instead of a silently misplaced tensor.
/// </summary>
public sealed class EmaShadowBuilder
{
    private readonly IReadOnlyList<EmaShadowEntry> _entries;
    private readonly IReadOnlyList<string> _localNames;
    private int _next;

    internal EmaShadowBuilder(IReadOnlyList<EmaShadowEntry> entries, IReadOnlyList<string> localNames)
    {
        _entries = entries;
        _localNames = localNames;
    }

    /// <summary>The entry of the next parameter slot, which must be named <paramref name="localName"/>.</summary>
    public EmaShadowEntry Next(string localName)
    {
        if (_next >= _entries.Count)
        {
            throw new InvalidOperationException(
                $"The model has more parameter slots than when the EMA manager was built (extra slot '{localName}').");
        }
        if (!string.Equals(_localNames[_next], localName, StringComparison.Ordinal))
        {
            throw new InvalidOperationException(
                $"The model's parameter slot {_next} is '{localName}', but the manager recorded '{_entries[_next].Name}'.");
        }
        return _entries[_next++];
    }

    internal void EnsureComplete()
    {
        if (_next != _entries.Count)
        {
            throw new InvalidOperationException(
                $"The typed shadow consumed {_next} of {_entries.Count} parameter slots; the model changed while the manager was built.");
        }
    }
}

using System;
using System.Collections.Generic;
using System.ComponentModel;

namespace EmaGen.CompilerServices;

/// <summary>
/// Feeds the generated <c>CreateShadow</c> the shadow entries in visit order. The generated code walks the model in the
/// same order as <c>VisitParameters</c>; every call names the local parameter, and a mismatch (the model changed shape
/// between the two walks) is an error instead of a silently misplaced tensor.
/// </summary>
[EditorBrowsable(EditorBrowsableState.Never)]
public sealed class EmaShadowBuilder
{
    private readonly IReadOnlyList<EmaShadowEntry> _entries;
    private readonly IReadOnlyList<string> _localNames;
    private readonly IReadOnlyList<EmaDynamicShadow> _dynamic;
    private int _next;
    private int _nextDynamic;

    // entries/localNames: the slots the generated code names itself; dynamic: the shadows of the dynamic submodules
    // that are not ignored, in walk order.
    internal EmaShadowBuilder(IReadOnlyList<EmaShadowEntry> entries, IReadOnlyList<string> localNames, IReadOnlyList<EmaDynamicShadow> dynamic)
    {
        _entries = entries;
        _localNames = localNames;
        _dynamic = dynamic;
    }

    /// <summary>The shadow of the next submodule whose parameters only run time knows; <paramref name="name"/> is its member name, for errors.</summary>
    public EmaDynamicShadow NextDynamic(string name)
    {
        if (_nextDynamic >= _dynamic.Count)
        {
            throw new InvalidOperationException(
                $"The model has more dynamic submodules than when the EMA manager was built (extra submodule '{name}').");
        }
        return _dynamic[_nextDynamic++];
    }

    /// <summary>The entry of the next parameter slot, which must be named <paramref name="localName"/>.</summary>
    public EmaShadowEntry Next(string localName)
    {
        SlotOrder.ThrowIfBeyond(_next, _entries.Count, localName);
        SlotOrder.ThrowIfRenamed(_next, localName, _localNames[_next], _entries[_next].Name);
        return _entries[_next++];
    }

    internal void EnsureComplete()
    {
        if (_next != _entries.Count || _nextDynamic != _dynamic.Count)
        {
            throw new InvalidOperationException(
                $"The typed shadow consumed {_next} of {_entries.Count} parameter slots; the model changed while the manager was built.");
        }
    }
}

using System.Collections;
using System.Collections.Generic;

namespace EmaGen;

/// <summary>The shadows of an array or <c>ModuleList</c> of submodules, indexed like the model's list.</summary>
public sealed class EmaShadowList<TShadow> : IReadOnlyList<TShadow>
{
    private readonly TShadow[] _items;

    /// <summary>Wraps shadows built by generated code, in list order.</summary>
    public EmaShadowList(TShadow[] items) => _items = items;

    /// <inheritdoc />
    public TShadow this[int index] => _items[index];

    /// <inheritdoc />
    public int Count => _items.Length;

    /// <inheritdoc />
    public IEnumerator<TShadow> GetEnumerator() => ((IEnumerable<TShadow>)_items).GetEnumerator();

    IEnumerator IEnumerable.GetEnumerator() => _items.GetEnumerator();
}

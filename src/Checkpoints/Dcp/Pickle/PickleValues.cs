using System;
using System.Collections.Generic;

namespace EmaGen.Dcp.Pickle;

// Plain C# values the safe pickle reader produces. Python None is null; bool, long, System.Numerics.BigInteger
// (ints beyond 64 bits), double, string and byte[] map directly; lists are List<object?>.

/// <summary>A Python tuple.</summary>
internal sealed record PickleTuple(object?[] Items)
{
    public int Count => Items.Length;
    public object? this[int index] => Items[index];
}

/// <summary>A Python dict, in insertion order (keys may be objects, such as DCP's MetadataIndex).</summary>
internal sealed class PickleDict
{
    // Hashed, so a dict of n items costs O(n) to build: a linear scan per insert would let a large hostile metadata
    // file take quadratic time.
    private readonly Dictionary<object, int> _index = new();
    private int _nullIndex = -1;

    public List<KeyValuePair<object?, object?>> Items { get; } = new();

    public object? this[string key] => TryGet(key, out var value) ? value : throw new KeyNotFoundException(key);

    public bool TryGet(string key, out object? value)
    {
        if (_index.TryGetValue(key, out int i))
        {
            value = Items[i].Value;
            return true;
        }
        value = null;
        return false;
    }

    public void Set(object? key, object? value)
    {
        int i = key is null ? _nullIndex : _index.GetValueOrDefault(key, -1);
        if (i >= 0)
        {
            Items[i] = new(key, value);
            return;
        }
        if (key is null) _nullIndex = Items.Count;
        else _index[key] = Items.Count;
        Items.Add(new(key, value));
    }
}

/// <summary>A whitelisted global (class, function or constant), by module and name.</summary>
internal sealed record PickleGlobal(string Module, string Name, GlobalKind Kind)
{
    public override string ToString() => Module + "." + Name;
}

/// <summary>What a whitelisted global is allowed to do.</summary>
internal enum GlobalKind
{
    /// <summary>A DCP metadata class: may be instantiated with NEWOBJ (no constructor runs) and filled with BUILD.</summary>
    DataClass,
    /// <summary>An Enum class: may be called with one value, or looked up with builtins.getattr.</summary>
    EnumClass,
    /// <summary>A torch dtype or layout constant.</summary>
    Constant,
    /// <summary>A legacy typed storage class or UntypedStorage, used only inside persistent ids.</summary>
    Storage,
    /// <summary>A function the reader evaluates itself, with checked arguments (torch.Size, _rebuild_tensor_v2, ...).</summary>
    Function,
}

/// <summary>An instance of a DCP metadata class (NEWOBJ), with the state BUILD gave it (dict, tuple or null).</summary>
internal sealed class PickleObject
{
    public PickleObject(PickleGlobal type) => Type = type;

    public PickleGlobal Type { get; }

    public object? State { get; set; }

    public override string ToString() => Type.Name;
}

/// <summary>An Enum member, as <c>EnumClass(value)</c> or <c>getattr(EnumClass, name)</c>.</summary>
internal sealed record PickleEnum(PickleGlobal Type, object? Value);

/// <summary><c>torch.Size</c>.</summary>
internal sealed record TorchSize(long[] Dims)
{
    public bool Equals(TorchSize? other) => other is not null && Dims.AsSpan().SequenceEqual(other.Dims);

    public override int GetHashCode()
    {
        var h = new HashCode();
        foreach (var d in Dims) h.Add(d);
        return h.ToHashCode();
    }

    public override string ToString() => "(" + string.Join(", ", Dims) + ")";
}

/// <summary>A persistent id <c>("storage", storage_type, key, location, numel)</c>: a storage record of the archive.</summary>
internal sealed record StorageReference(PickleGlobal StorageType, string Key, string Location, long Numel);

/// <summary>The result of <c>torch._utils._rebuild_tensor_v2/_v3</c>: where a tensor's elements are and how they are laid out.</summary>
internal sealed record TensorReference(StorageReference Storage, long StorageOffset, long[] Size, long[] Stride, string DType);

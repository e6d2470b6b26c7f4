using System;
using System.Collections.Generic;
using System.ComponentModel;
using TorchSharp;

namespace EmaGen.CompilerServices;

/// <summary>
/// What the typed shadows of TorchSharp's built-in modules share: their slots (tracked or not) in TorchSharp's
/// registration order, found by local name. Each subclass only names its slots as typed properties.
/// </summary>
[EditorBrowsable(EditorBrowsableState.Never)]
public abstract class BuiltinModuleShadow
{
    private readonly EmaShadowEntry[] _entries;

    private protected BuiltinModuleShadow(params EmaShadowEntry[] entries) => _entries = entries;

    /// <summary>The slot whose local name is <paramref name="name"/> (<c>weight</c>, <c>running_mean</c>, <c>bias_hh</c>).</summary>
    /// <exception cref="KeyNotFoundException">The module has no such slot.</exception>
    public EmaShadowEntry Entry(string name)
    {
        foreach (var entry in _entries)
        {
            var full = entry.Name;
            if (full.EndsWith(name, StringComparison.Ordinal) && (full.Length == name.Length || full[full.Length - name.Length - 1] == '.')) return entry;
        }
        throw new KeyNotFoundException($"{GetType().Name} has no slot '{name}'.");
    }

    private protected torch.Tensor At(int index) => _entries[index].Tensor;
}

using System;
using System.Collections.Generic;
using System.ComponentModel;
using System.Linq;
using TorchSharp;

namespace EmaGen.CompilerServices;

/// <summary>
/// The shadow of a submodule whose parameters only run time knows (a <c>Sequential</c>, <c>ModuleDict</c>,
/// <c>ParameterList</c>, <c>LSTM</c>, <c>MultiheadAttention</c>, a <c>Transformer*</c> module, or a module class without
/// <see cref="EmaTrackedAttribute"/>), indexed by the names TorchSharp's <c>named_parameters()</c> gives inside it:
/// <c>ema.Shadow.layers["0.weight"]</c>, <c>ema.Shadow.encoder["layers.1.self_attn.in_proj_weight"]</c>. Buffers are
/// listed after the parameters, by their <c>named_buffers()</c> names.
/// </summary>
[EditorBrowsable(EditorBrowsableState.Never)]
public sealed class EmaDynamicShadow
{
    private readonly Dictionary<string, EmaShadowEntry> _byName;

    internal EmaDynamicShadow(string fullName, IReadOnlyList<string> names, IReadOnlyList<EmaShadowEntry> entries)
    {
        FullName = fullName;
        Names = names;
        _byName = new Dictionary<string, EmaShadowEntry>(names.Count, StringComparer.Ordinal);
        for (int i = 0; i < names.Count; i++) _byName[names[i]] = entries[i];
    }

    /// <summary>The submodule's full dotted name in the model (<c>blocks.0.mlp</c>).</summary>
    public string FullName { get; }

    /// <summary>The names inside the submodule, parameters then buffers, as <c>named_parameters()</c>/<c>named_buffers()</c> list them.</summary>
    public IReadOnlyList<string> Names { get; }

    /// <summary>Number of parameters and buffers the submodule registers.</summary>
    public int Count => Names.Count;

    /// <summary>The shadow of the parameter named <paramref name="name"/> inside the submodule (a view the manager owns).</summary>
    /// <exception cref="KeyNotFoundException">The submodule registers no such name.</exception>
    /// <exception cref="InvalidOperationException">The parameter has no shadow (frozen, or a buffer without <see cref="EmaOptions.TrackBuffers"/>).</exception>
    public torch.Tensor this[string name] => Entry(name).Tensor;

    /// <summary>True when the submodule registers <paramref name="name"/> (with or without a shadow).</summary>
    public bool Contains(string name) => _byName.ContainsKey(name);

    /// <summary>The slot named <paramref name="name"/>, or an empty one (say, a bias the module was built without) for generated typed shadows.</summary>
    public EmaShadowEntry Slot(string name) => _byName.TryGetValue(name, out var entry)
        ? entry
        : new EmaShadowEntry(FullName.Length == 0 ? name : FullName + "." + name, null, "the model holds no such tensor");

    /// <summary>The slot named <paramref name="name"/>: its full name, whether it is averaged, and its shadow.</summary>
    /// <exception cref="KeyNotFoundException">The submodule registers no such name.</exception>
    public EmaShadowEntry Entry(string name)
    {
        if (_byName.TryGetValue(name, out var entry)) return entry;
        var shown = string.Join(", ", Names.Take(8).Select(n => $"'{n}'")) + (Names.Count > 8 ? $", ... ({Names.Count} in all)" : "");
        throw new KeyNotFoundException($"Submodule '{FullName}' registers no parameter or buffer named '{name}'; it has {(Names.Count == 0 ? "none" : shown)}.");
    }
}

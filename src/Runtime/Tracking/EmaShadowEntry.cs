using System;
using System.ComponentModel;
using TorchSharp;

namespace EmaGen.CompilerServices;

/// <summary>
/// One parameter slot of a typed shadow: the shadow tensor when the parameter is averaged, otherwise the reason it is
/// not. Generated shadow properties read <see cref="Tensor"/>, which names the parameter when there is nothing to return.
/// </summary>
[EditorBrowsable(EditorBrowsableState.Never)]
public sealed class EmaShadowEntry
{
    private readonly torch.Tensor? _tensor;
    private readonly string _missingReason;

    internal EmaShadowEntry(string name, torch.Tensor? tensor, string missingReason)
    {
        Name = name;
        _tensor = tensor;
        _missingReason = missingReason;
    }

    /// <summary>Full dotted parameter name.</summary>
    public string Name { get; }

    /// <summary>True when this parameter has a shadow.</summary>
    public bool IsTracked => _tensor is not null;

    /// <summary>The shadow tensor (a view into the manager's storage; the manager owns it).</summary>
    /// <exception cref="InvalidOperationException">The parameter has no shadow (frozen, or absent in the model).</exception>
    public torch.Tensor Tensor =>
        _tensor ?? throw new InvalidOperationException($"Parameter '{Name}' has no EMA shadow: {_missingReason}.");
}

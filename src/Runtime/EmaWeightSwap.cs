using System;
using System.Collections.Generic;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// The EMA weights placed into a model for a scope (<c>using (ema.SwapInto(model)) { Evaluate(model); }</c>); disposing
/// it restores the model's own weights bit for bit, also when the scope ends with an exception.
/// Where the shadow has the parameter's dtype and device, nothing is copied: the parameter is re-pointed at the shadow's
/// storage (<c>set_</c>, as packing does) and back at its own on dispose, so a swap costs no memory and no traffic
/// whether or not the model is packed. An fp32 shadow of a bf16/fp16 parameter cannot be lent that way, so those
/// parameters are saved in a copy of their own dtype and the shadow is copied in. A BEMA profile's weights are not a
/// shadow: every parameter is saved in a copy of its own and the corrected weights are formed straight into it.
/// While swapped, the model's parameters and the shadows share storage: evaluate, do not train.
/// </summary>
public sealed class EmaWeightSwap : IDisposable
{
    private readonly List<(torch.Tensor Target, torch.Tensor Own)> _repointed = new();
    private readonly List<(torch.Tensor Target, torch.Tensor Backup)> _copied = new();
    private readonly Action _onDispose;
    private bool _disposed;

    // saveOnly: every target is saved in a copy and nothing is written (the manager writes a BEMA profile's corrected
    // weights into the targets itself).
    internal EmaWeightSwap((torch.Tensor Target, torch.Tensor Shadow)[] pairs, Action onDispose, bool saveOnly = false)
    {
        _onDispose = onDispose;
        using var _ = torch.no_grad();
        try
        {
            // A tied weight can come as several tensor objects over one memory (its owner first): each object is
            // re-pointed, but the memory is saved and written once.
            var copiedInto = new HashSet<IntPtr>();
            foreach (var (target, shadow) in pairs)
            {
                if (!saveOnly && target.dtype == shadow.dtype && target.device_type == shadow.device_type && target.device_index == shadow.device_index)
                {
                    // Another handle of the same tensor, already re-pointed with it.
                    if (target.numel() > 0 && LiveSlots.DataPointer(target) == LiveSlots.DataPointer(shadow)) continue;
                    // detach() aliases the parameter's storage, offset and strides: what set_ restores on dispose.
                    var own = target.detach().DetachFromDisposeScope();
                    _repointed.Add((target, own));
                    InPlace.Release(target.set_(shadow), target);
                }
                else
                {
                    if (!copiedInto.Add(LiveSlots.DataPointer(target))) continue;
                    var backup = target.detach().clone().DetachFromDisposeScope();
                    _copied.Add((target, backup));
                    if (!saveOnly) InPlace.Release(target.copy_(shadow), target);
                }
            }
        }
        catch
        {
            Restore();
            throw;
        }
    }

    /// <summary>Number of tensors re-pointed at their shadow (no copy) and number restored from a saved copy.</summary>
    internal (int Repointed, int Copied) Counts => (_repointed.Count, _copied.Count);

    /// <summary>Restores the model's own weights.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        using var _ = torch.no_grad();
        Restore();
        _onDispose();
    }

    private void Restore()
    {
        foreach (var (target, own) in _repointed)
        {
            InPlace.Release(target.set_(own), target);
            own.Dispose();
        }
        _repointed.Clear();
        foreach (var (target, backup) in _copied)
        {
            InPlace.Release(target.copy_(backup), target);
            backup.Dispose();
        }
        _copied.Clear();
    }
}

using System;
using System.Collections.Generic;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// The EMA weights placed into a model for a scope (<c>using (ema.SwapInto(model)) { Evaluate(model); }</c>); disposing
/// it restores the model's own weights bit for bit, also when the scope ends with an exception.
/// Tensors whose shadow has the parameter's dtype are exchanged in place through a bounded scratch buffer (no full
/// extra copy); an fp32 shadow of a bf16/fp16 parameter cannot be exchanged without losing its precision, so those
/// parameters are saved in a copy of their own dtype and the shadow is copied in.
/// </summary>
public sealed class EmaWeightSwap : IDisposable
{
    private const long ScratchElements = 1 << 20;

    private readonly List<(torch.Tensor Target, torch.Tensor Shadow)> _exchanged = new();
    private readonly List<(torch.Tensor Target, torch.Tensor Backup)> _copied = new();
    private readonly Action _onDispose;
    private bool _disposed;

    internal EmaWeightSwap(List<(torch.Tensor Target, torch.Tensor Shadow)> pairs, Action onDispose)
    {
        _onDispose = onDispose;
        using var _ = torch.no_grad();
        try
        {
            foreach (var (target, shadow) in pairs)
            {
                if (target.dtype == shadow.dtype && target.is_contiguous() && target.device_type == shadow.device_type)
                {
                    Exchange(target, shadow);
                    _exchanged.Add((target, shadow));
                }
                else
                {
                    var backup = target.detach().clone().DetachFromDisposeScope();
                    _copied.Add((target, backup));
                    InPlace.Release(target.copy_(shadow), target);
                }
            }
        }
        catch
        {
            Restore();
            throw;
        }
    }

    /// <summary>Number of tensors exchanged in place and number restored from a saved copy.</summary>
    public (int Exchanged, int Copied) Counts => (_exchanged.Count, _copied.Count);

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
        // Exchanging again undoes an exchange exactly.
        foreach (var (target, shadow) in _exchanged) Exchange(target, shadow);
        _exchanged.Clear();
        foreach (var (target, backup) in _copied)
        {
            InPlace.Release(target.copy_(backup), target);
            backup.Dispose();
        }
        _copied.Clear();
    }

    private static void Exchange(torch.Tensor a, torch.Tensor b)
    {
        using var flatA = a.view(-1);
        using var flatB = b.view(-1);
        long n = flatA.numel();
        using var scratch = torch.empty(Math.Min(n, ScratchElements), a.dtype, a.device);
        for (long offset = 0; offset < n; offset += ScratchElements)
        {
            long count = Math.Min(ScratchElements, n - offset);
            using var pa = flatA.narrow(0, offset, count);
            using var pb = flatB.narrow(0, offset, count);
            using var s = scratch.narrow(0, 0, count);
            InPlace.Release(s.copy_(pa), s);
            InPlace.Release(pa.copy_(pb), pa);
            InPlace.Release(pb.copy_(s), pb);
        }
    }
}

using System;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// The backend for tensors on other devices, boxes the raw kernels do not take (non-contiguous layouts, dtype pairs
/// without a kernel) and everything with <see cref="EmaOptions.ForceTorchOps"/>: <see cref="Blend"/> per queued
/// unit and written profile, on the tensors' own device. A packed group is one blend over its flat buffers, so a CUDA
/// model pays a few launches per (device, dtype) group and profile, not per tensor; the decay is a scalar argument,
/// never read back, so there is no host synchronisation.
/// </summary>
internal sealed class TorchOpsBackend : IUpdateBackend
{
    private readonly ShadowArena[] _arenas;
    private readonly ShadowItem[] _items;
    private readonly LiveSlots _live;
    private readonly double[] _decays;
    private readonly int[] _groups;
    private readonly int[] _queued;
    private int _groupCount;
    private int _itemCount;

    public TorchOpsBackend(ShadowArena[] arenas, ShadowItem[] items, LiveSlots live)
    {
        _arenas = arenas;
        _items = items;
        _live = live;
        _decays = new double[arenas.Length];
        _groups = new int[arenas[0].Groups.Count];
        _queued = new int[items.Length];
    }

    public void QueueGroup(int group) => _groups[_groupCount++] = group;

    public void QueueTensor(int item) => _queued[_itemCount++] = item;

    public void Run(ReadOnlySpan<double> decays)
    {
        decays.CopyTo(_decays);
        if (_groupCount == 0 && _itemCount == 0) return;
        try
        {
            // no_grad allocates a guard object, so it is only opened when there is something to blend.
            using var _ = torch.no_grad();
            for (int i = 0; i < _groupCount; i++)
            {
                int g = _groups[i];
                var parameters = _arenas[0].Groups[g].PackedParameters!;
                for (int k = 0; k < _decays.Length; k++)
                {
                    if (!double.IsNaN(_decays[k])) Blend(_arenas[k].Groups[g].Shadow, parameters, _decays[k]);
                }
            }
            for (int i = 0; i < _itemCount; i++)
            {
                int item = _queued[i];
                var live = _live.Tensor(_items[item].Slot)!;
                // A shard's box is a view made for this step; a whole tensor is blended as it is.
                using var view = _items[item].LiveIsBox ? null : _items[item].BoxOf(live);
                for (int k = 0; k < _decays.Length; k++)
                {
                    if (!double.IsNaN(_decays[k])) Blend(_arenas[k][item]!, view ?? live, _decays[k]);
                }
            }
        }
        finally
        {
            _groupCount = 0;
            _itemCount = 0;
        }
    }

    // Exactly the raw kernels' expression (RawCpuBackend.Blend: shadow * d + parameter * w, each product and the sum
    // rounded in fp32, fp64 for fp64 shadows, the result narrowed once), so a shadow does not depend on which path
    // updated it. LibTorch has no fused multiply-add op to match a fused kernel with; this is why the kernels do not
    // fuse either.
    /// <summary>Updates <paramref name="shadow"/> from <paramref name="parameter"/> (same shape); integer and bool shadows are copied.</summary>
    public static void Blend(torch.Tensor shadow, torch.Tensor parameter, double decay)
    {
        if (!DTypes.IsFloatingPoint(shadow.dtype))
        {
            InPlace.Release(shadow.copy_(parameter), shadow);
            return;
        }
        var compute = shadow.dtype == torch.ScalarType.Float64 ? torch.ScalarType.Float64 : torch.ScalarType.Float32;
        // The kernels' constants: fp32 math takes decay and 1 - decay rounded to fp32.
        double d = compute == torch.ScalarType.Float32 ? (float)decay : decay;
        double w = compute == torch.ScalarType.Float32 ? (float)(1.0 - decay) : 1.0 - decay;
        using var weighted = Weighted(parameter, compute, w);
        if (shadow.dtype == compute)
        {
            InPlace.Release(shadow.mul_(d), shadow);
            InPlace.Release(shadow.add_(weighted), shadow);
            return;
        }
        // A low-precision shadow: widened exactly, blended in fp32, narrowed once (round to nearest even).
        using var wide = shadow.to_type(compute);
        InPlace.Release(wide.mul_(d), wide);
        InPlace.Release(wide.add_(weighted), wide);
        InPlace.Release(shadow.copy_(wide), shadow);
    }

    // parameter * w as a new tensor of the compute dtype (bf16/fp16 widened exactly first).
    private static torch.Tensor Weighted(torch.Tensor parameter, torch.ScalarType compute, double w)
    {
        if (parameter.dtype == compute) return parameter.mul(w);
        using var wide = parameter.to_type(compute);
        return wide.mul(w);
    }
}

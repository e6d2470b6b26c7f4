using System;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// The backend for tensors on other devices, boxes the raw kernels do not take (non-contiguous layouts, dtype pairs
/// without a kernel) and everything with <see cref="EmaOptions.ForceTorchOps"/>: <see cref="TorchBlend"/> per queued
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

    public void Begin(ReadOnlySpan<double> decays) => decays.CopyTo(_decays);

    public void QueueGroup(int group) => _groups[_groupCount++] = group;

    public void QueueTensor(int item) => _queued[_itemCount++] = item;

    public void Run()
    {
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
                    if (!double.IsNaN(_decays[k])) TorchBlend.Apply(_arenas[k].Groups[g].Shadow, parameters, _decays[k]);
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
                    if (!double.IsNaN(_decays[k])) TorchBlend.Apply(_arenas[k][item]!, view ?? live, _decays[k]);
                }
            }
        }
        finally
        {
            _groupCount = 0;
            _itemCount = 0;
        }
    }
}

using System;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// The CPU backend: queued units become <see cref="UpdateWorkList"/> entries (raw memory, SIMD kernels, every profile
/// in one pass, split across the pool's threads for large steps). No TorchSharp calls and no managed allocation per step.
/// </summary>
internal sealed class RawCpuBackend : IUpdateBackend
{
    private readonly UpdateWorkList _work;
    private readonly CpuWorkerPool? _pool;
    private readonly ShadowItem[] _items;
    private readonly LiveSlots _live;
    private readonly ArenaGroup[] _groups;
    // Per profile, then per group or per item: the shadow's data (shadows are never re-pointed); per group: the packed
    // parameters' data (zero when unpacked).
    private readonly IntPtr[][] _groupShadow;
    private readonly IntPtr[][] _itemShadow;
    private readonly IntPtr[] _groupParameters;

    public RawCpuBackend(ShadowArena[] arenas, ShadowItem[] items, LiveSlots live, CpuWorkerPool? pool)
    {
        _items = items;
        _live = live;
        _pool = pool;
        _groups = [.. arenas[0].Groups];
        _work = new UpdateWorkList(arenas.Length, Math.Max(items.Length, _groups.Length));
        _groupShadow = new IntPtr[arenas.Length][];
        _itemShadow = new IntPtr[arenas.Length][];
        for (int k = 0; k < arenas.Length; k++)
        {
            _groupShadow[k] = new IntPtr[_groups.Length];
            for (int g = 0; g < _groups.Length; g++) _groupShadow[k][g] = NativeTensor.CpuDataPointer(arenas[k].Groups[g].Shadow);
            _itemShadow[k] = new IntPtr[items.Length];
            for (int i = 0; i < items.Length; i++) _itemShadow[k][i] = NativeTensor.CpuDataPointer(arenas[k][i]!);
        }
        _groupParameters = new IntPtr[_groups.Length];
        for (int g = 0; g < _groups.Length; g++)
        {
            if (_groups[g].PackedParameters is { } packed) _groupParameters[g] = NativeTensor.CpuDataPointer(packed);
        }
    }

    public void Begin(ReadOnlySpan<double> decays)
    {
        for (int k = 0; k < decays.Length; k++) _work.SetProfile(k, !double.IsNaN(decays[k]), decays[k]);
        _work.BeginStep();
    }

    public void QueueGroup(int group) =>
        _work.Add(_groupShadow, group, _groupParameters[group], _groups[group].Elements, _groups[group].Kernel);

    public void QueueTensor(int item)
    {
        ref readonly var it = ref _items[item];
        _work.Add(_itemShadow, item, _live.Pointer(it.Slot) + (nint)it.ParameterOffsetBytes, it.Numel, it.Kernel);
    }

    public void Run() => _work.Run(_pool);
}

using System;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// The CPU backend: queued units become <see cref="UpdateWorkList"/> entries (raw memory, SIMD kernels, every profile
/// in one pass, split across the pool's threads for large steps). No TorchSharp calls and no managed allocation per step.
/// </summary>
internal sealed class RawCpuBackend : IUpdateBackend
{
    private readonly UpdateTargets _targets;
    private readonly UpdateWorkList _work;
    private readonly CpuWorkerPool? _pool;
    // Per profile, then per group: the flat shadow's data; per group: the packed parameters' data (zero when unpacked).
    private readonly IntPtr[][] _groupShadow;
    private readonly IntPtr[] _groupParameters;

    public RawCpuBackend(UpdateTargets targets, UpdateWorkList work, CpuWorkerPool? pool)
    {
        _targets = targets;
        _work = work;
        _pool = pool;
        var groups = targets.Arenas[0].Groups;
        _groupShadow = new IntPtr[targets.Arenas.Length][];
        for (int k = 0; k < targets.Arenas.Length; k++)
        {
            _groupShadow[k] = new IntPtr[groups.Count];
            for (int g = 0; g < groups.Count; g++) _groupShadow[k][g] = NativeTensor.CpuDataPointer(targets.Arenas[k].Groups[g].Shadow);
        }
        _groupParameters = new IntPtr[groups.Count];
        for (int g = 0; g < groups.Count; g++)
        {
            if (groups[g].PackedParameters is { } packed) _groupParameters[g] = NativeTensor.CpuDataPointer(packed);
        }
    }

    public void QueueGroup(int group)
    {
        var g = _targets.Arenas[0].Groups[group];
        _work.Add(_groupShadow, group, _groupParameters[group], g.Elements, g.Kernel);
    }

    public void QueueTensor(int item) =>
        _work.Add(_targets.ShadowPointer, item, _targets.Pointer(item), _targets.Count[item], _targets.Kernel[item]);

    public void Run() => _work.Run(_pool);
}

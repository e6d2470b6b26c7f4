using System;
using System.Collections.Generic;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// Owns the shadow storage: one contiguous buffer per (device, dtype) group, with every shadow a view into it at a
/// 64-byte aligned offset. Grouping is what lets later update paths run a few large operations instead of one per tensor.
/// </summary>
internal sealed class ShadowArena : IDisposable
{
    private const int AlignmentBytes = 64;

    private readonly List<torch.Tensor> _buffers = new();
    private readonly torch.Tensor?[] _views;

    /// <summary>Allocates shadows for the tracked entries of <paramref name="parameters"/> and copies the current values in.</summary>
    public ShadowArena(IReadOnlyList<EmaParameterInfo> parameters, IReadOnlyList<torch.Tensor?> sources)
    {
        _views = new torch.Tensor?[parameters.Count];
        var groups = new Dictionary<(DeviceType, int, torch.ScalarType), List<int>>();
        for (int i = 0; i < parameters.Count; i++)
        {
            if (!parameters[i].Tracked) continue;
            var p = parameters[i];
            var key = (p.Device.type, p.Device.index, p.DType);
            if (!groups.TryGetValue(key, out var members)) groups[key] = members = new List<int>();
            members.Add(i);
        }

        using var _ = torch.no_grad();
        foreach (var (key, members) in groups)
        {
            var (deviceType, deviceIndex, dtype) = key;
            long alignElements = Math.Max(1, AlignmentBytes / ElementSize(dtype));
            var offsets = new long[members.Count];
            long total = 0;
            for (int k = 0; k < members.Count; k++)
            {
                offsets[k] = total;
                total += RoundUp(parameters[members[k]].Numel, alignElements);
            }
            // The manager owns its storage; a caller's dispose scope must not free it at the scope's end.
            var buffer = torch.zeros(total, dtype, new torch.Device(deviceType, deviceIndex)).DetachFromDisposeScope();
            _buffers.Add(buffer);
            for (int k = 0; k < members.Count; k++)
            {
                int index = members[k];
                using var slice = buffer.narrow(0, offsets[k], parameters[index].Numel);
                var view = slice.view(parameters[index].Shape).DetachFromDisposeScope();
                InPlace.Release(view.copy_(sources[index]!), view);
                _views[index] = view;
            }
        }
    }

    /// <summary>The shadow of parameter <paramref name="index"/> (indices of the manager's parameter list), or null when untracked.</summary>
    public torch.Tensor? this[int index] => _views[index];

    /// <summary>Total bytes of shadow storage, alignment padding included.</summary>
    public long Bytes
    {
        get
        {
            long bytes = 0;
            foreach (var b in _buffers) bytes += b.NumberOfElements * b.ElementSize;
            return bytes;
        }
    }

    public void Dispose()
    {
        foreach (var v in _views) v?.Dispose();
        foreach (var b in _buffers) b.Dispose();
        _buffers.Clear();
    }

    private static long RoundUp(long n, long multiple) => (n + multiple - 1) / multiple * multiple;

    private static int ElementSize(torch.ScalarType dtype)
    {
        using var probe = torch.empty(0, dtype);
        return (int)probe.ElementSize;
    }
}

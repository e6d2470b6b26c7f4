using System;
using System.Collections.Generic;
using TorchSharp;

namespace EmaGen;

/// <summary>One (device, shadow dtype, parameter dtype) group: a flat shadow buffer and, when packed, a flat parameter buffer with the same layout.</summary>
internal sealed class ArenaGroup
{
    public required torch.Device Device { get; init; }
    public required torch.ScalarType ShadowDType { get; init; }
    public required torch.ScalarType ParameterDType { get; init; }
    public required torch.Tensor Shadow { get; init; }
    public required long Elements { get; init; }
    public torch.Tensor? PackedParameters { get; set; }
    /// <summary>Why a group that packing was asked for is not packed (null when packed or not asked).</summary>
    public string? NotPackedReason { get; set; }
}

/// <summary>
/// Owns the shadow storage: one contiguous buffer per (device, shadow dtype, parameter dtype) group, every shadow a view
/// into it at a 64-byte aligned offset, so an update can be a few large operations instead of one per tensor.
/// Optionally packs the model's parameters into matching flat buffers (<see cref="EmaOptions.PackParameters"/>).
/// </summary>
internal sealed class ShadowArena : IDisposable
{
    private const int AlignmentBytes = 64;

    private readonly List<ArenaGroup> _groups = new();
    private readonly torch.Tensor?[] _views;
    private readonly int[] _groupOf;
    private readonly long[] _offsetOf;
    private readonly IReadOnlyList<EmaParameterInfo> _parameters;

    /// <summary>
    /// Allocates shadows for the tracked entries of <paramref name="parameters"/> and copies the current values in.
    /// <paramref name="followers"/> gives per entry the other tensor objects over the same memory (a weight tied by
    /// sharing storage): packing re-points them with it.
    /// </summary>
    public ShadowArena(IReadOnlyList<EmaParameterInfo> parameters, IReadOnlyList<torch.Tensor> sources, bool packParameters,
        IReadOnlyList<torch.Tensor[]>? followers = null)
    {
        _parameters = parameters;
        _views = new torch.Tensor?[parameters.Count];
        _groupOf = new int[parameters.Count];
        _offsetOf = new long[parameters.Count];
        Array.Fill(_groupOf, -1);

        // Buffers get groups of their own: they are never packed, so a packed group holds parameters only.
        var members = new Dictionary<(DeviceType, int, torch.ScalarType, torch.ScalarType, bool), List<int>>();
        var order = new List<(DeviceType, int, torch.ScalarType, torch.ScalarType, bool)>();
        for (int i = 0; i < parameters.Count; i++)
        {
            var p = parameters[i];
            if (!p.Tracked) continue;
            var key = (p.Device.type, p.Device.index, p.ShadowDType, p.DType, p.IsBuffer);
            if (!members.TryGetValue(key, out var list))
            {
                members[key] = list = new List<int>();
                order.Add(key);
            }
            list.Add(i);
        }

        using var _ = torch.no_grad();
        foreach (var key in order)
        {
            var (deviceType, deviceIndex, shadowDType, parameterDType, isBuffer) = key;
            var device = new torch.Device(deviceType, deviceIndex);
            var indices = members[key];
            long alignElements = Math.Max(1, AlignmentBytes / Math.Min(DTypes.SizeOf(shadowDType), DTypes.SizeOf(parameterDType)));
            long total = 0;
            foreach (int index in indices)
            {
                _offsetOf[index] = total;
                total += RoundUp(parameters[index].Numel, alignElements);
            }
            // The manager owns its storage; a caller's dispose scope must not free it at the scope's end.
            var group = new ArenaGroup
            {
                Device = device,
                ShadowDType = shadowDType,
                ParameterDType = parameterDType,
                Shadow = HugePages.Zeros(total, shadowDType, device).DetachFromDisposeScope(),
                Elements = total,
            };
            int groupIndex = _groups.Count;
            _groups.Add(group);
            foreach (int index in indices)
            {
                _groupOf[index] = groupIndex;
                var view = Slice(group.Shadow, _offsetOf[index], parameters[index]);
                InPlace.Release(view.copy_(sources[index]), view);
                _views[index] = view;
            }
            if (packParameters && !isBuffer) Pack(group, indices, parameters, sources, followers);
        }
    }

    public IReadOnlyList<ArenaGroup> Groups => _groups;

    /// <summary>The shadow of parameter <paramref name="index"/> (indices of the manager's parameter list), or null when untracked.</summary>
    public torch.Tensor? this[int index] => _views[index];

    public int GroupOf(int index) => _groupOf[index];

    public long OffsetOf(int index) => _offsetOf[index];

    /// <summary>Total bytes of shadow storage, alignment padding included.</summary>
    public long Bytes
    {
        get
        {
            long bytes = 0;
            foreach (var g in _groups) bytes += g.Elements * g.Shadow.ElementSize;
            return bytes;
        }
    }

    public void Dispose()
    {
        foreach (var v in _views) v?.Dispose();
        foreach (var g in _groups)
        {
            g.Shadow.Dispose();
            // The model's parameters keep the packed storage alive through their own references.
            g.PackedParameters?.Dispose();
        }
        _groups.Clear();
    }

    // set_ makes each Parameter object alias a slice of one flat buffer: the optimizer keeps the same objects, and its
    // writes land in the flat buffer that the fused update reads.
    //
    // Only tensors that own their storage alone are re-pointed: a parameter that is a view of a larger buffer (the
    // trainer's own flat parameters) must keep aliasing it, so its group stays unpacked. A tied weight is one entry (the
    // manager binds its names to one shadow); another Parameter object over its memory is re-pointed with it.
    private void Pack(ArenaGroup group, List<int> indices, IReadOnlyList<EmaParameterInfo> parameters, IReadOnlyList<torch.Tensor> sources,
        IReadOnlyList<torch.Tensor[]>? followers)
    {
        var seen = new HashSet<IntPtr>();
        foreach (int index in indices)
        {
            var source = sources[index];
            long bytes = parameters[index].Numel * source.ElementSize;
            if (source.device_type != DeviceType.CPU && source.device_type != DeviceType.CUDA)
            {
                group.NotPackedReason = $"'{parameters[index].Name}' is on {source.device_type}";
                return;
            }
            if (source.storage_offset() != 0 || !source.is_contiguous() || NativeTensor.StorageByteCount(source) != bytes)
            {
                group.NotPackedReason = $"'{parameters[index].Name}' shares its storage with other tensors (a view of a larger buffer), which packing would break";
                return;
            }
            if (bytes > 0 && !seen.Add(NativeTensor.DataPointer(source)))
            {
                // Tied weights are one entry; this is the same memory seen with another shape (a reshaped view).
                group.NotPackedReason = $"'{parameters[index].Name}' shares its memory with another parameter of another shape, which packing would break";
                return;
            }
        }
        var flat = HugePages.Zeros(group.Elements, group.ParameterDType, group.Device).DetachFromDisposeScope();
        foreach (int index in indices)
        {
            using var view = Slice(flat, _offsetOf[index], parameters[index]);
            InPlace.Release(view.copy_(sources[index]), view);
            InPlace.Release(sources[index].set_(view), sources[index]);
            if (followers is null) continue;
            foreach (var follower in followers[index]) InPlace.Release(follower.set_(view), follower);
        }
        group.PackedParameters = flat;
    }

    /// <summary>
    /// Views shaped like this arena's shadows into <paramref name="groupBuffers"/> (one flat buffer per group, laid out
    /// like <see cref="Groups"/>): null where a parameter has no shadow. The caller owns the views.
    /// </summary>
    public torch.Tensor?[] ViewsIn(IReadOnlyList<torch.Tensor> groupBuffers)
    {
        var views = new torch.Tensor?[_views.Length];
        for (int i = 0; i < views.Length; i++)
        {
            if (_views[i] is not null) views[i] = Slice(groupBuffers[_groupOf[i]], _offsetOf[i], _parameters[i]);
        }
        return views;
    }

    private static torch.Tensor Slice(torch.Tensor flat, long offset, EmaParameterInfo p)
    {
        using var slice = flat.narrow(0, offset, p.Numel);
        return slice.view(p.Shape).DetachFromDisposeScope();
    }

    private static long RoundUp(long n, long multiple) => (n + multiple - 1) / multiple * multiple;
}

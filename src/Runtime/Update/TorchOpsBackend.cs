using System;
using System.Collections.Generic;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// The backend for tensors on other devices, boxes the raw kernels do not take (non-contiguous layouts, dtype pairs
/// without a kernel) and everything with <see cref="EmaOptions.ForceTorchOps"/>: <see cref="Blend"/> per queued
/// unit and written profile, on the tensors' own device. A packed group is one blend over its flat buffers, so a CUDA
/// model pays a few launches per (device, dtype) group and profile, not per tensor; the weight is a device tensor
/// refilled when a schedule moves the decay, never read back, so there is no host synchronisation.
/// </summary>
internal sealed partial class TorchOpsBackend : IUpdateBackend, IDisposable
{
    private readonly ShadowArena[] _arenas;
    private readonly ShadowItem[] _items;
    private readonly LiveSlots _live;
    private readonly double[] _decays;
    private readonly int[] _groups;
    private readonly int[] _queued;
    private readonly List<(int Profile, torch.Tensor Weight, double Value)> _weights = new();
    private int _groupCount;
    private int _itemCount;
    private readonly bool _guard;
    private readonly bool _rms;
    // The step's counts, one set per device, left there until a report reads them (TorchOpsBackend.Guard.cs).
    private readonly List<DeviceCounts> _counts = new();
    private readonly long[] _elements;

    public TorchOpsBackend(ShadowArena[] arenas, ShadowItem[] items, LiveSlots live, bool guard, bool rms)
    {
        _guard = guard;
        _rms = rms;
        _elements = new long[arenas.Length];
        _arenas = arenas;
        _items = items;
        _live = live;
        _decays = new double[arenas.Length];
        _groups = new int[arenas[0].Groups.Count];
        _queued = new int[items.Length];
    }

    public void QueueGroup(int group) => _groups[_groupCount++] = group;

    public void QueueTensor(int item)
    {
        _queued[_itemCount++] = item;
        // A packed group's tensor run on its own: its heal is named as a tensor, and the group's baseline goes stale.
        int group = _arenas[0].GroupOf(item);
        if (_arenas[0].Groups[group].PackedParameters is not null) HealingBaselineStale(group);
    }

    /// <summary>
    /// Blends every queued unit into each profile whose decay is a number; with the guard or the distance on, the
    /// step's counts stay on the device and <paramref name="tally"/> is told to read them when a report asks.
    /// </summary>
    public void Run(ReadOnlySpan<double> decays, StepTally tally)
    {
        decays.CopyTo(_decays);
        if (_groupCount == 0 && _itemCount == 0) return;
        bool counted = _guard || _rms;
        try
        {
            if (counted) BeginCounts();
            if (_guard) BeginHealing();
            // no_grad allocates a guard object, so it is only opened where autograd could record: a packed group's flat
            // buffers are plain tensors, but a queued box is a live parameter.
            using var _ = _itemCount > 0 ? torch.no_grad() : null;
            for (int i = 0; i < _groupCount; i++)
            {
                int g = _groups[i];
                var parameters = _arenas[0].Groups[g].PackedParameters!;
                bool first = true;
                for (int k = 0; k < _decays.Length; k++)
                {
                    if (double.IsNaN(_decays[k])) continue;
                    Blend(_arenas[k].Groups[g].Shadow, parameters, new SliceStep(_decays[k], k, first, Unit.Group(g), counted));
                    if (_rms) _elements[k] += AveragedElements(Unit.Group(g));
                    first = false;
                }
            }
            for (int i = 0; i < _itemCount; i++)
            {
                int item = _queued[i];
                var live = _live.Tensor(_items[item].Slot)!;
                // A shard's box is a view made for this step; a whole tensor is blended as it is.
                using var view = _items[item].LiveIsBox ? null : _items[item].BoxOf(live);
                bool first = true;
                for (int k = 0; k < _decays.Length; k++)
                {
                    if (double.IsNaN(_decays[k])) continue;
                    Blend(_arenas[k][item]!, view ?? live, new SliceStep(_decays[k], k, first, Unit.Item(item), counted));
                    if (_rms) _elements[k] += AveragedElements(Unit.Item(item));
                    first = false;
                }
            }
            if (counted) tally.Pending = this;
            if (_guard) _healingUnread = true;
        }
        finally
        {
            _groupCount = 0;
            _itemCount = 0;
        }
    }

    // LibTorch's lerp_ (ema + w * (p - ema), the raw kernels' form, whose fixed point is exactly the parameter) in
    // place: for a shadow of the parameter's dtype one op per unit and profile and no temporary, the least memory
    // traffic the op path can have. Which ATen kernel runs depends on the device (a fused multiply-add where there is
    // one), so its bits can differ from the raw kernels' (within a tested bound) and between machines, but not between
    // runs on one; it turns a -0.0 shadow of a -0.0 parameter into +0.0. lerp_ takes one dtype, so a bf16/fp16
    // parameter is widened exactly; a low-precision shadow is widened and narrowed once rather than blended by a lerp_
    // of its own dtype, which casts the weight down to that dtype too (w = 0.001 off by up to 2⁻⁹ of itself in bf16, a
    // biased average, not a rounding error of the result): those copies, and the guard's
    // masks and selections, are made a slice at a time, so what an update holds beyond the model and its shadows stays
    // under SliceBudgetBytes at any model size (docs/performance.md). Slices are fixed by the unit's size alone, so a
    // step is deterministic.
    /// <summary>Updates <paramref name="shadow"/> from <paramref name="parameter"/> (same shape) for one profile; integer and bool shadows are copied.</summary>
    private void Blend(torch.Tensor shadow, torch.Tensor parameter, SliceStep step)
    {
        if (!DTypes.IsFloatingPoint(shadow.dtype))
        {
            InPlace.Release(shadow.copy_(parameter), shadow);
            return;
        }
        var compute = shadow.dtype == torch.ScalarType.Float64 ? torch.ScalarType.Float64 : torch.ScalarType.Float32;
        step.Compute = compute;
        step.Weight = Weight(step.Profile, compute, shadow.device_type, shadow.device_index, compute == torch.ScalarType.Float32 ? (float)(1.0 - step.Decay) : 1.0 - step.Decay);
        long temporary = TemporaryBytesPerElement(shadow.dtype, parameter.dtype, compute, step.Counted);
        if (temporary == 0)
        {
            InPlace.Release(shadow.lerp_(parameter, step.Weight), shadow);
            return;
        }
        long budget = step.Counted ? CountedSliceBudgetBytes : SliceBudgetBytes;
        long slice = Math.Max(SliceQuantum, budget / temporary / SliceQuantum * SliceQuantum);
        step.ScratchElements = Math.Min(slice, shadow.numel());
        // A packed group's buffers are flat and kept: its slices are made once (TorchOpsBackend.Slices.cs).
        if (!step.Counted && step.Unit.GroupIndex >= 0 && shadow.dim() == 1) BlendPlanned(shadow, parameter, slice, step);
        else Sliced(shadow, parameter, slice, step);
    }

    // The most a slice's temporaries may take, and the multiple of elements a slice is cut at (vector bodies whole).
    // The guard's and the distance's temporaries are made and freed per slice (a host allocator may hold freed blocks
    // between them, a device allocator caches them), so they get half the budget of the scratch buffers kept for widening.
    private const long SliceBudgetBytes = 48L << 20;
    private const long CountedSliceBudgetBytes = 24L << 20;
    private const long SliceQuantum = 1 << 16;

    // What one unit and profile's blend passes down to its slices.
    private struct SliceStep(double decay, int profile, bool first, Unit unit, bool counted)
    {
        public readonly double Decay = decay;
        public readonly int Profile = profile;
        public readonly bool First = first;
        public readonly Unit Unit = unit;
        public readonly bool Counted = counted;
        public torch.ScalarType Compute;
        public torch.Tensor Weight = null!;
        public long ScratchElements;
    }

    // Bytes of temporaries per element that one slice holds at once: the widened parameter and shadow, and under the
    // guard two masks, two selections and a transient mask; the distance adds a difference, its square and the square
    // cast to float64 for the sum.
    private long TemporaryBytesPerElement(torch.ScalarType shadow, torch.ScalarType parameter, torch.ScalarType compute, bool counted)
    {
        long wide = DTypes.SizeOf(compute);
        long bytes = (parameter == compute ? 0 : wide) + (shadow == compute ? 0 : wide);
        if (counted && _guard) bytes += 3 + 2 * wide;
        if (counted && _rms) bytes += 2 * wide + 8;
        return bytes;
    }

    // Cuts a unit into slices of at most `slice` elements and blends each.
    private void Sliced(torch.Tensor shadow, torch.Tensor parameter, long slice, SliceStep step)
    {
        var blend = new BlendEachSlice(this, step);
        ForEachSlice(shadow, parameter, slice, ref blend);
    }

    private readonly struct BlendEachSlice(TorchOpsBackend backend, SliceStep step) : ISliceAction
    {
        public void Run(torch.Tensor shadow, torch.Tensor? parameter) => backend.BlendSlice(shadow, parameter!, step);
    }

    private void BlendSlice(torch.Tensor shadow, torch.Tensor parameter, SliceStep step)
    {
        if (step.Counted)
        {
            BlendCounted(shadow, parameter, step);
            return;
        }
        using var wideParameter = parameter.dtype == step.Compute ? null : ScratchView(parameter, step, role: 0);
        using var wideShadow = shadow.dtype == step.Compute ? null : ScratchView(shadow, step, role: 1);
        LerpSlice(shadow, parameter, wideParameter, wideShadow, step.Weight);
    }

    // One slice's lerp_ in the compute dtype, given scratch views shaped like it where a side is narrower (null where
    // it is not): the parameter widened exactly, the shadow widened, blended and narrowed back once. Every plain blend
    // goes through here, planned (a packed group's kept views) or not, so both give the same bits.
    private static void LerpSlice(torch.Tensor shadow, torch.Tensor parameter, torch.Tensor? wideParameter, torch.Tensor? wideShadow, torch.Tensor weight)
    {
        var p = parameter;
        if (wideParameter is not null)
        {
            InPlace.Release(wideParameter.copy_(parameter), wideParameter);
            p = wideParameter;
        }
        if (wideShadow is null)
        {
            InPlace.Release(shadow.lerp_(p, weight), shadow);
            return;
        }
        InPlace.Release(wideShadow.copy_(shadow), wideShadow);
        InPlace.Release(wideShadow.lerp_(p, weight), wideShadow);
        InPlace.Release(shadow.copy_(wideShadow), shadow);
    }

    // Widened copies go into scratch buffers held across steps, one per (device, dtype, role: parameter or shadow),
    // as large as the largest slice met (at most a slice): a steady-state step allocates no device memory for them.
    private readonly List<(torch.ScalarType DType, int Role, torch.Tensor Buffer)> _scratch = new();

    // A view of the scratch buffer shaped like `slice`, in the compute dtype (its contents are the last slice's).
    private torch.Tensor ScratchView(torch.Tensor slice, SliceStep step, int role)
    {
        var buffer = Scratch(slice.device_type, slice.device_index, step.Compute, role, step.ScratchElements);
        using var flat = buffer.narrow(0, 0, slice.numel());
        return flat.view_as(slice);
    }

    // `slice` copied into its scratch view (widened exactly).
    private torch.Tensor Widened(torch.Tensor slice, SliceStep step, int role)
    {
        var view = ScratchView(slice, step, role);
        InPlace.Release(view.copy_(slice), view);
        return view;
    }

    private torch.Tensor Scratch(DeviceType deviceType, int deviceIndex, torch.ScalarType dtype, int role, long elements)
    {
        for (int i = 0; i < _scratch.Count; i++)
        {
            var (t, r, buffer) = _scratch[i];
            if (r != role || t != dtype || buffer.device_type != deviceType || buffer.device_index != deviceIndex) continue;
            if (buffer.numel() >= elements) return buffer;
            // The kept slice plans hold views of the old buffer, which would keep it alive beside the new one.
            DisposePlans();
            buffer.Dispose();
            _scratch.RemoveAt(i);
            break;
        }
        var made = torch.empty(elements, dtype, new torch.Device(deviceType, deviceIndex)).DetachFromDisposeScope();
        _scratch.Add((dtype, role, made));
        return made;
    }

    // The weight 1 - decay as a 0-dim tensor on the shadows' device, one per (profile, dtype, device), made once and
    // refilled only when a schedule changes the decay: lerp_ takes its weight as a tensor, and a fill is a launch,
    // never a host synchronisation. The device comes as its type and index (Tensor.device makes an object per call).
    private torch.Tensor Weight(int profile, torch.ScalarType dtype, DeviceType deviceType, int deviceIndex, double w)
    {
        for (int i = 0; i < _weights.Count; i++)
        {
            var (k, t, value) = _weights[i];
            if (k != profile || t.dtype != dtype || t.device_type != deviceType || t.device_index != deviceIndex) continue;
            if (value != w)
            {
                Refill(t, w);
                _weights[i] = (k, t, w);
            }
            return t;
        }
        var made = torch.tensor(w, dtype, new torch.Device(deviceType, deviceIndex)).DetachFromDisposeScope();
        _weights.Add((profile, made, w));
        return made;
    }

    // A schedule that moves the decay refills the weight every step. On the CPU the value is written in place (a fill
    // takes a Scalar, a managed object per call); elsewhere it is a fill launch, with the Scalar kept alive across the
    // native call (nothing else holds it, and a collection could free it under LibTorch) and freed at once.
    private static unsafe void Refill(torch.Tensor weight, double w)
    {
        if (weight.device_type == DeviceType.CPU)
        {
            if (weight.dtype == torch.ScalarType.Float64) *(double*)NativeTensor.DataPointer(weight) = w;
            else *(float*)NativeTensor.DataPointer(weight) = (float)w;
            return;
        }
        using var value = w.ToScalar();
        InPlace.Release(weight.fill_(value), weight);
    }

    public void Dispose()
    {
        DisposePlans();
        foreach (var (_, t, _) in _weights) t.Dispose();
        _weights.Clear();
        foreach (var (_, _, buffer) in _scratch) buffer.Dispose();
        _scratch.Clear();
        foreach (var c in _counts) c.Dispose();
        _counts.Clear();
        _one.Dispose();
    }
}

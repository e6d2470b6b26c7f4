using System;
using System.Collections.Generic;
using TorchSharp;

namespace EmaGen;

// A packed group's slices, made once. A group's flat buffers belong to the arenas for the manager's life, so the
// views of each slice and the scratch views it is widened into are made at the group's first step and kept: every view
// is a managed wrapper, and a steady-state step then makes none. The slices are those Sliced would cut (a flat buffer
// narrowed along its one dimension), so the bits are the same either way.
internal sealed partial class TorchOpsBackend
{
    // A scratch buffer replaced by a larger one (met later in a first step) disposes every plan (Scratch).
    private sealed class SlicePlan : IDisposable
    {
        public readonly List<PlannedSlice> Slices = new();

        public void Dispose()
        {
            foreach (var s in Slices)
            {
                s.Shadow.Dispose();
                s.Parameter.Dispose();
                s.WideParameter?.Dispose();
                s.WideShadow?.Dispose();
            }
            Slices.Clear();
        }
    }

    private readonly record struct PlannedSlice(torch.Tensor Shadow, torch.Tensor Parameter, torch.Tensor? WideParameter, torch.Tensor? WideShadow);

    // Per group shadow (one per profile and group), by reference: the lookup allocates nothing.
    private readonly Dictionary<torch.Tensor, SlicePlan> _plans = new(ReferenceEqualityComparer.Instance);

    // A packed group's blend without the guard's or the distance's temporaries (they are made per slice anyway).
    private void BlendPlanned(torch.Tensor shadow, torch.Tensor parameter, long slice, SliceStep step)
    {
        if (!_plans.TryGetValue(shadow, out var plan))
        {
            plan = MakePlan(shadow, parameter, slice, step);
            _plans[shadow] = plan;
        }
        foreach (var s in plan.Slices) LerpSlice(s.Shadow, s.Parameter, s.WideParameter, s.WideShadow, step.Weight);
    }

    private SlicePlan MakePlan(torch.Tensor shadow, torch.Tensor parameter, long slice, SliceStep step)
    {
        var device = shadow.device_type;
        int index = shadow.device_index;
        // The scratch buffers first: taking them may replace a smaller one, which disposes the plans made so far.
        var parameterScratch = parameter.dtype == step.Compute ? null : Scratch(device, index, step.Compute, 0, step.ScratchElements);
        var shadowScratch = shadow.dtype == step.Compute ? null : Scratch(device, index, step.Compute, 1, step.ScratchElements);
        var plan = new SlicePlan();
        long n = shadow.numel();
        for (long at = 0; at < n; at += slice)
        {
            long length = Math.Min(slice, n - at);
            // Kept across steps: out of any dispose scope the caller's update runs in.
            plan.Slices.Add(new PlannedSlice(
                shadow.narrow(0, at, length).DetachFromDisposeScope(),
                parameter.narrow(0, at, length).DetachFromDisposeScope(),
                parameterScratch?.narrow(0, 0, length).DetachFromDisposeScope(),
                shadowScratch?.narrow(0, 0, length).DetachFromDisposeScope()));
        }
        return plan;
    }

    private void DisposePlans()
    {
        foreach (var plan in _plans.Values) plan.Dispose();
        _plans.Clear();
    }
}

using System;
using TorchSharp;

namespace EmaGen;

// The non-finite guard and the distance on the TorchSharp-op path. Per unit and profile, instead of one lerp_:
// a finite mask of the parameter and of the shadow, two where (keep the shadow where the parameter is not finite, then
// heal a non-finite shadow from the parameter), the lerp_, a copy back, and one sum per count (docs/performance.md
// lists the passes). Counts are added into device tensors and read only when a report asks: no host
// synchronisation per step. Blend hands this a slice at a time, so the temporaries stay bounded.
internal sealed partial class TorchOpsBackend
{
    private readonly struct Unit
    {
        private Unit(int group, int item) => (GroupIndex, ItemIndex) = (group, item);

        public readonly int GroupIndex;
        public readonly int ItemIndex;

        public static Unit Group(int g) => new(g, -1);

        public static Unit Item(int i) => new(-1, i);
    }

    /// <summary>One device's counts: per unit (groups, then items) the non-finite and healed elements; per profile the squared distance.</summary>
    private sealed class DeviceCounts : IDisposable
    {
        public required torch.Device Device { get; init; }
        public required torch.Tensor Counts { get; init; }
        public required torch.Tensor Squares { get; init; }

        public void Dispose()
        {
            Counts.Dispose();
            Squares.Dispose();
        }
    }

    // Elements a unit averages (a packed group's alignment padding and integer buffers left out), for the distance.
    private long AveragedElements(Unit unit)
    {
        if (unit.ItemIndex >= 0) return DTypes.IsFloatingPoint(_arenas[0][unit.ItemIndex]!.dtype) ? _arenas[0][unit.ItemIndex]!.numel() : 0;
        long n = 0;
        for (int i = 0; i < _items.Length; i++)
        {
            if (_arenas[0].GroupOf(i) == unit.GroupIndex && DTypes.IsFloatingPoint(_arenas[0][i]!.dtype)) n += _items[i].Numel;
        }
        return n;
    }

    private int UnitCount => _groups.Length + _items.Length;

    private int Index(Unit unit) => unit.GroupIndex >= 0 ? unit.GroupIndex : _groups.Length + unit.ItemIndex;

    private void BeginCounts()
    {
        Array.Clear(_elements);
        foreach (var c in _counts)
        {
            InPlace.Release(c.Counts.zero_(), c.Counts);
            InPlace.Release(c.Squares.zero_(), c.Squares);
        }
    }

    private DeviceCounts CountsOn(torch.Device device)
    {
        foreach (var c in _counts)
        {
            if (c.Device.type == device.type && c.Device.index == device.index) return c;
        }
        var made = new DeviceCounts
        {
            Device = device,
            // Float64: exact to 2^53 elements, and summed with the same alpha as the distances.
            Counts = torch.zeros(2L * UnitCount, torch.ScalarType.Float64, device).DetachFromDisposeScope(),
            Squares = torch.zeros(_decays.Length, torch.ScalarType.Float64, device).DetachFromDisposeScope(),
        };
        _counts.Add(made);
        return made;
    }

    // Blend under the guard (and/or with the distance): the same lerp_ as Blend on the elements that are finite on both
    // sides, the shadow kept where the parameter is not finite, the parameter taken where only the shadow is not.
    // One slice of a unit (Blend cuts them and sets the step's weight and compute dtype).
    private void BlendCounted(torch.Tensor shadow, torch.Tensor parameter, SliceStep step)
    {
        var compute = step.Compute;
        var weight = step.Weight;
        int profile = step.Profile;
        var counts = CountsOn(shadow.device);
        using var wideParameter = parameter.dtype == compute ? null : Widened(parameter, step, role: 0);
        using var wideShadow = shadow.dtype == compute ? null : Widened(shadow, step, role: 1);
        var p = wideParameter ?? parameter;
        var s = wideShadow ?? shadow;
        if (!_guard)
        {
            InPlace.Release(s.lerp_(p, weight), s);
            if (_rms) AddSquares(counts, profile, s, p);
        }
        else
        {
            using var finiteParameter = Finite(p);
            using var finiteShadow = Finite(s);
            using var target = torch.where(finiteParameter, p, s);
            using var start = torch.where(finiteShadow, s, target);
            int index = Index(step.Unit);
            if (step.First) AddCount(counts, 2 * index, finiteParameter, negate: true);
            using (var healed = finiteShadow.logical_not())
            {
                InPlace.Release(healed.logical_and_(finiteParameter), healed);
                AddCount(counts, 2 * index + 1, healed, negate: false);
            }
            InPlace.Release(start.lerp_(target, weight), start);
            if (_rms) AddSquares(counts, profile, start, target);
            InPlace.Release(s.copy_(start), s);
        }
        if (wideShadow is not null) InPlace.Release(shadow.copy_(wideShadow), shadow);
    }

    // add_'s alpha, held for the backend's life: TorchSharp's add_(tensor) makes a temporary Scalar that nothing keeps
    // alive during the native call, so a collection can free it under LibTorch (seen as random add_ failures).
    private readonly Scalar _one = 1.0.ToScalar();

    // x − x is 0 where x is finite and NaN elsewhere, and NaN alone is not equal to itself: two elementwise passes and
    // one temporary of x's dtype, where LibTorch's isfinite is four passes and more temporaries.
    private static torch.Tensor Finite(torch.Tensor x)
    {
        using var zeroOrNaN = x.sub(x);
        return zeroOrNaN.eq(zeroOrNaN);
    }

    // count_nonzero, not a sum: a sum of a bool mask casts it to the sum's dtype (a temporary of that size) first.
    private void AddCount(DeviceCounts counts, long slot, torch.Tensor mask, bool negate)
    {
        using var flagged = negate ? mask.logical_not() : null;
        using var n = (flagged ?? mask).count_nonzero();
        using var cell = counts.Counts.select(0, slot);
        InPlace.Release(cell.add_(n, _one), cell);
    }

    private void AddSquares(DeviceCounts counts, int profile, torch.Tensor shadow, torch.Tensor target)
    {
        using var d = shadow.sub(target);
        // Under the guard a difference is non-finite only where shadow and parameter both were (the shadow kept as it
        // is): left out, as the raw kernels leave out every element whose parameter is not finite.
        if (_guard) InPlace.Release(d.nan_to_num_(0.0, 0.0, 0.0), d);
        using var square = d.square();
        using var squares = square.sum(torch.ScalarType.Float64);
        using var cell = counts.Squares.select(0, profile);
        InPlace.Release(cell.add_(squares, _one), cell);
    }

    /// <summary>Reads this step's device counts into <paramref name="tally"/> (a host synchronisation per device).</summary>
    public void ReadInto(StepTally tally)
    {
        _healingUnread = false;
        long nonFinite = 0;
        var squares = new double[_decays.Length];
        foreach (var c in _counts)
        {
            using var hostCounts = c.Counts.cpu();
            using var hostSquares = c.Squares.cpu();
            var n = Array.ConvertAll(hostCounts.data<double>().ToArray(), c => (long)c);
            var sq = hostSquares.data<double>().ToArray();
            for (int k = 0; k < sq.Length; k++) squares[k] += sq[k];
            for (int u = 0; u < UnitCount; u++)
            {
                nonFinite += n[2 * u];
                tally.Healed += n[2 * u + 1];
                if (n[2 * u] > 0) NameUnit(tally, u, healed: false);
                if (n[2 * u + 1] > 0) NameUnit(tally, u, healed: true);
            }
        }
        tally.NonFinite += nonFinite;
        for (int k = 0; k < squares.Length; k++)
        {
            if (_elements[k] == 0) continue;
            tally.SumSquares[k] += squares[k];
            tally.Elements[k] += _elements[k] - nonFinite;
        }
    }

    // A tensor unit is named; a packed group's non-finite tensors are found in the parameters as they are now (read
    // right after the update, the step's own values), its healed tensors from the shadows (TorchOpsBackend.Healing.cs).
    private void NameUnit(StepTally tally, int unit, bool healed)
    {
        if (unit >= _groups.Length)
        {
            tally.AddName(healed, _items[unit - _groups.Length].Info.Name);
            return;
        }
        var arena = _arenas[0];
        bool found = healed && NameHealedInGroup(tally, unit);
        for (int i = 0; i < _items.Length; i++)
        {
            if (arena.GroupOf(i) != unit) continue;
            if (!healed)
            {
                if (NonFiniteElements(_live.Tensor(_items[i].Slot)!) == 0) continue;
                found = true;
                tally.AddName(healed, _items[i].Info.Name);
            }
        }
        if (!found) tally.AddName(healed, $"(a packed {arena.Groups[unit].ShadowDType} group)");
    }
}

// The throw policy's pre-scan on the device: one read back per queued unit (a host synchronisation
// each, the price of refusing before anything is written).
internal sealed partial class TorchOpsBackend
{
    public int FindNonFinite()
    {
        using var _ = torch.no_grad();
        for (int i = 0; i < _groupCount; i++)
        {
            int g = _groups[i];
            if (NonFiniteElements(_arenas[0].Groups[g].PackedParameters!) == 0) continue;
            for (int item = 0; item < _items.Length; item++)
            {
                if (_arenas[0].GroupOf(item) == g && NonFiniteElements(_live.Tensor(_items[item].Slot)!) > 0) return item;
            }
        }
        for (int i = 0; i < _itemCount; i++)
        {
            int item = _queued[i];
            var live = _live.Tensor(_items[item].Slot)!;
            using var view = _items[item].LiveIsBox ? null : _items[item].BoxOf(live);
            if (NonFiniteElements(view ?? live) > 0) return item;
        }
        return -1;
    }

    public void Discard()
    {
        _groupCount = 0;
        _itemCount = 0;
    }
}

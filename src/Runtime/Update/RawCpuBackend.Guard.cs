using System;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace EmaGen;

/// <summary>What a kernel does besides the blend, fixed per instantiation so the JIT drops what is off.</summary>
internal interface IKernelMode
{
    /// <summary>Keep the shadow where the parameter is non-finite; heal a non-finite shadow from a finite parameter.</summary>
    static abstract bool Guard { get; }

    /// <summary>Sum the squared distance between the updated shadow and the parameter.</summary>
    static abstract bool Rms { get; }
}

internal readonly struct AllowMode : IKernelMode
{
    public static bool Guard => false;
    public static bool Rms => false;
}

internal readonly struct GuardMode : IKernelMode
{
    public static bool Guard => true;
    public static bool Rms => false;
}

internal readonly struct AllowRmsMode : IKernelMode
{
    public static bool Guard => false;
    public static bool Rms => true;
}

internal readonly struct GuardRmsMode : IKernelMode
{
    public static bool Guard => true;
    public static bool Rms => true;
}

/// <summary>
/// One profile's tally over one part of a step (a chunk, run by one thread): what the guard found and the squared
/// distance. Names are recorded through <see cref="Names"/> when the guard meets an element outside the tensor it last
/// named, so a tensor full of NaN costs one lookup, not one per element.
/// </summary>
internal struct KernelStats
{
    public long NonFinite;
    public long Healed;
    public double SumSquares;
    public RawCpuBackend? Names;
    public int Part;
    public long NonFiniteFrom, NonFiniteTo, HealedFrom, HealedTo;

    public void Reset(RawCpuBackend names, int part)
    {
        this = default;
        Names = names;
        Part = part;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    public void NoteNonFinite(long at)
    {
        NonFinite++;
        if (at < NonFiniteFrom || at >= NonFiniteTo) Names?.Record(Part, at, healed: false, out NonFiniteFrom, out NonFiniteTo);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    public void NoteHealed(long at)
    {
        Healed++;
        if (at < HealedFrom || at >= HealedTo) Names?.Record(Part, at, healed: true, out HealedFrom, out HealedTo);
    }
}

// The guard's element rule, the decay-0 copy under the guard, the throw policy's pre-scan, and where a flagged element
// belongs.
internal sealed unsafe partial class RawCpuBackend
{
    /// <summary>Tensor names recorded per part of a step, per kind (non-finite, healed); the report shows the first few.</summary>
    public const int NamesPerPart = 4;

    /// <summary>
    /// One element under <typeparamref name="TMode"/>: a non-finite parameter leaves the shadow as it was, a non-finite
    /// shadow takes a finite parameter's value, anything else is the blend <c>ema − (ema − p)·w</c>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static T Element<T, TMode>(T e, T p, T w, ref KernelStats s, long at)
        where T : unmanaged, IFloatingPointIeee754<T>
        where TMode : struct, IKernelMode
    {
        if (TMode.Guard)
        {
            if (!T.IsFinite(p))
            {
                s.NoteNonFinite(at);
                return e;
            }
            if (!T.IsFinite(e))
            {
                s.NoteHealed(at);
                return p;
            }
        }
        T r = e - (e - p) * w;
        if (TMode.Rms)
        {
            double d = double.CreateTruncating(r - p);
            s.SumSquares += d * d;
        }
        return r;
    }

    // x - x is 0 for a finite x and NaN for an infinity or a NaN, and a sum with a non-finite term is non-finite, so one
    // compare covers the vectors summed into its operands. A sum of finite values that overflows is a false alarm: that
    // block takes the element path, which gives the same bits for finite values.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool AllFinite(Vector256<float> a, Vector256<float> b)
    {
        var sum = a + b;
        return Vector256.EqualsAll(sum - sum, Vector256<float>.Zero);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool AllFinite(Vector128<float> a, Vector128<float> b)
    {
        var sum = a + b;
        return Vector128.EqualsAll(sum - sum, Vector128<float>.Zero);
    }

    private static bool NonFiniteBFloat16(ushort bits) => (bits & 0x7F80) == 0x7F80;

    private static bool NonFiniteFloat16(Half value) => !Half.IsFinite(value);

    // Decay 0: the shadow becomes the parameter exactly (widened exactly for fp32 shadows of bf16/fp16 parameters).
    // Under the guard a non-finite parameter element is not copied; the shadow is not read, so nothing is "healed".
    private static void CopyKernel<TMode>(KernelKind kind, void* ema, void* p, long count, ref KernelStats s, long at)
        where TMode : struct, IKernelMode
    {
        switch (kind)
        {
            case KernelKind.Float32FromBFloat16:
                for (long i = 0; i < count; i++)
                {
                    ushort bits = ((ushort*)p)[i];
                    if (TMode.Guard && NonFiniteBFloat16(bits)) s.NoteNonFinite(at + i);
                    else ((float*)ema)[i] = FromBFloat16(bits);
                }
                break;
            case KernelKind.Float32FromFloat16:
                for (long i = 0; i < count; i++)
                {
                    Half h = ((Half*)p)[i];
                    if (TMode.Guard && NonFiniteFloat16(h)) s.NoteNonFinite(at + i);
                    else ((float*)ema)[i] = (float)h;
                }
                break;
            case KernelKind.Float32 when TMode.Guard:
                {
                    long i = 0;
                    if (Vector256.IsHardwareAccelerated)
                    {
                        for (; i <= count - 16; i += 16)
                        {
                            var p0 = Vector256.Load((float*)p + i);
                            var p1 = Vector256.Load((float*)p + i + 8);
                            if (!AllFinite(p0, p1))
                            {
                                CopyFinite((float*)ema + i, (float*)p + i, 16, ref s, at + i);
                                continue;
                            }
                            p0.Store((float*)ema + i);
                            p1.Store((float*)ema + i + 8);
                        }
                    }
                    CopyFinite((float*)ema + i, (float*)p + i, count - i, ref s, at + i);
                    break;
                }
            case KernelKind.Float64 when TMode.Guard:
                for (long i = 0; i < count; i++)
                {
                    double v = ((double*)p)[i];
                    if (double.IsFinite(v)) ((double*)ema)[i] = v;
                    else s.NoteNonFinite(at + i);
                }
                break;
            case KernelKind.BFloat16 when TMode.Guard:
                for (long i = 0; i < count; i++)
                {
                    ushort bits = ((ushort*)p)[i];
                    if (NonFiniteBFloat16(bits)) s.NoteNonFinite(at + i);
                    else ((ushort*)ema)[i] = bits;
                }
                break;
            case KernelKind.Float16 when TMode.Guard:
                for (long i = 0; i < count; i++)
                {
                    Half h = ((Half*)p)[i];
                    if (NonFiniteFloat16(h)) s.NoteNonFinite(at + i);
                    else ((Half*)ema)[i] = h;
                }
                break;
            case KernelKind.Float32:
            case KernelKind.Float64:
            case KernelKind.BFloat16:
            case KernelKind.Float16:
            case KernelKind.Copy1:
            case KernelKind.Copy2:
            case KernelKind.Copy4:
            case KernelKind.Copy8:
                // Shadow and parameter of one dtype: the bytes themselves.
                long bytes = count * ShadowElementSize(kind);
                Buffer.MemoryCopy(p, ema, bytes, bytes);
                break;
            default:
                throw new InvalidOperationException($"No CPU copy for {kind}: a new kernel kind needs its decay-0 copy here.");
        }
    }

    private static void CopyFinite(float* ema, float* p, long count, ref KernelStats s, long at)
    {
        for (long i = 0; i < count; i++)
        {
            if (float.IsFinite(p[i])) ema[i] = p[i];
            else s.NoteNonFinite(at + i);
        }
    }

    /// <summary>The first non-finite element among <paramref name="count"/> parameters of <paramref name="kind"/>, or −1 (the throw policy's pre-scan).</summary>
    public static long FirstNonFinite(KernelKind kind, void* p, long count)
    {
        long i = 0;
        switch (kind)
        {
            case KernelKind.Float32:
                if (Vector256.IsHardwareAccelerated)
                {
                    for (; i <= count - 16; i += 16)
                    {
                        if (!AllFinite(Vector256.Load((float*)p + i), Vector256.Load((float*)p + i + 8))) break;
                    }
                }
                for (; i < count; i++) if (!float.IsFinite(((float*)p)[i])) return i;
                return -1;
            case KernelKind.Float64:
                for (; i < count; i++) if (!double.IsFinite(((double*)p)[i])) return i;
                return -1;
            case KernelKind.Float32FromBFloat16:
            case KernelKind.BFloat16:
                for (; i < count; i++) if (NonFiniteBFloat16(((ushort*)p)[i])) return i;
                return -1;
            case KernelKind.Float32FromFloat16:
            case KernelKind.Float16:
                for (; i < count; i++) if (NonFiniteFloat16(((Half*)p)[i])) return i;
                return -1;
            default:
                return -1;
        }
    }
}

// The step's tallies: per part, merged in part order; names found by where a flagged element sits in the step's list.
internal sealed unsafe partial class RawCpuBackend
{
    // Grows the per-part tallies to `parts` (the first large steps only; a steady state allocates nothing).
    private void EnsureParts(int parts)
    {
        int profiles = _decays.Length;
        if (_stats.Length >= parts * profiles) return;
        _stats = new KernelStats[parts * profiles];
        _names = new int[parts * 2 * NamesPerPart];
        _nameCount = new int[parts * 2];
    }

    private void Collect(int parts, StepTally tally)
    {
        int profiles = _decays.Length;
        int first = _activeProfiles[0];
        if (_mode >= 2)
        {
            long averaged = AveragedElements();
            for (int a = 0; a < _activeCount; a++) tally.Elements[_activeProfiles[a]] += averaged;
        }
        for (int part = 0; part < parts; part++)
        {
            tally.NonFinite += _stats[part * profiles + first].NonFinite;
            for (int a = 0; a < _activeCount; a++)
            {
                int k = _activeProfiles[a];
                ref var s = ref _stats[part * profiles + k];
                tally.Healed += s.Healed;
                tally.SumSquares[k] += s.SumSquares;
                tally.Elements[k] -= s.NonFinite;
            }
            for (int kind = 0; kind < 2; kind++)
            {
                for (int j = 0; j < _nameCount[2 * part + kind]; j++)
                {
                    tally.AddName(kind == 1, _items[_names[(2 * part + kind) * NamesPerPart + j]].Info.Name);
                }
            }
        }
    }

    // The averaged elements of the step: the entries less the packed groups' alignment padding and the integer buffers
    // (copied, not averaged).
    private long AveragedElements()
    {
        long n = 0;
        for (int e = 0; e < _length; e++)
        {
            if (_kernel[e] is KernelKind.Copy1 or KernelKind.Copy2 or KernelKind.Copy4 or KernelKind.Copy8) continue;
            if (!_entryIsGroup[e])
            {
                n += _count[e];
                continue;
            }
            foreach (int item in _groupItems[_entrySource[e]]) n += _items[item].Numel;
        }
        return n;
    }

    /// <summary>
    /// Records the item holding element <paramref name="at"/> of the step's list for part <paramref name="part"/> (once
    /// per item and kind, up to <see cref="NamesPerPart"/>) and returns that item's range in the list, so the caller
    /// does not ask again while it stays inside.
    /// </summary>
    public void Record(int part, long at, bool healed, out long from, out long to)
    {
        int item = ItemAt(at, out from, out to);
        int slot = 2 * part + (healed ? 1 : 0);
        int count = _nameCount[slot];
        for (int j = 0; j < count; j++)
        {
            if (_names[slot * NamesPerPart + j] == item) return;
        }
        if (count < NamesPerPart)
        {
            _names[slot * NamesPerPart + count] = item;
            _nameCount[slot] = count + 1;
        }
    }

    // The item holding element `at` of the step's list, and that item's range in the list.
    private int ItemAt(long at, out long from, out long to)
    {
        int e = Array.BinarySearch(_start, 0, _length, at);
        if (e < 0) e = ~e - 1;
        while (e + 1 < _length && _start[e + 1] <= at) e++;
        if (!_entryIsGroup[e])
        {
            from = _start[e];
            to = from + _count[e];
            return _entrySource[e];
        }
        int g = _entrySource[e];
        var offsets = _groupItemOffsets[g];
        int j = Array.BinarySearch(offsets, at - _start[e]);
        if (j < 0) j = ~j - 1;
        int item = _groupItems[g][j];
        from = _start[e] + offsets[j];
        to = from + _items[item].Numel;
        return item;
    }

    /// <summary>
    /// The throw policy's pre-scan, before anything is written: the first queued item with a non-finite parameter
    /// element, or −1. One extra read of the parameters, on the calling thread.
    /// </summary>
    public int FindNonFinite()
    {
        for (int e = 0; e < _length; e++)
        {
            long at = FirstNonFinite(_kernel[e], (void*)_parameter[e], _count[e]);
            if (at >= 0) return ItemAt(_start[e] + at, out _, out _);
        }
        return -1;
    }

    /// <summary>Forgets the queued entries without running them (the throw policy found a non-finite element).</summary>
    public void Discard()
    {
        _length = 0;
        _elements = 0;
    }
}

using System.Collections.Generic;

namespace EmaGen;

/// <summary>
/// What the backends found in one step, for <see cref="EmaStepReport"/>: non-finite parameter elements (counted once,
/// however many profiles read them), healed shadow elements (over all profiles), the first few tensors of each, and per
/// profile the squared distance and the elements it covers. Cleared and refilled each step; nothing is allocated after
/// the first steps. The TorchSharp-op backend leaves its counts on the device until <see cref="Settle"/> reads them.
/// </summary>
internal sealed class StepTally
{
    /// <summary>How many tensor names of each kind a report keeps.</summary>
    public const int MaxNames = 4;

    public StepTally(int profiles)
    {
        SumSquares = new double[profiles];
        Elements = new long[profiles];
    }

    public long NonFinite;
    public long Healed;
    public readonly double[] SumSquares;
    public readonly long[] Elements;
    public readonly List<string> NonFiniteNames = new(MaxNames);
    public readonly List<string> HealedNames = new(MaxNames);

    /// <summary>A backend whose counts for this step are still on the device.</summary>
    public TorchOpsBackend? Pending;

    public void Clear()
    {
        NonFinite = Healed = 0;
        System.Array.Clear(SumSquares);
        System.Array.Clear(Elements);
        NonFiniteNames.Clear();
        HealedNames.Clear();
        Pending = null;
    }

    public void AddName(bool healed, string name)
    {
        var names = healed ? HealedNames : NonFiniteNames;
        if (names.Count < MaxNames && !names.Contains(name)) names.Add(name);
    }

    /// <summary>Reads the device counts into this tally, once (a host synchronisation on a device).</summary>
    public void Settle()
    {
        if (Pending is not { } pending) return;
        Pending = null;
        pending.ReadInto(this);
    }
}

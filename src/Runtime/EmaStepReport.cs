using System;
using System.Collections.Generic;
using System.Globalization;
using System.Text;

namespace EmaGen;

/// <summary>
/// What the last <c>Update</c> did, for a trainer to log: the step, each profile's decay, how many elements the
/// non-finite guard kept (non-finite parameters) or healed (non-finite shadows) and in which tensors, and, with
/// <see cref="EmaOptions.ReportDistance"/>, each profile's RMS distance to the live weights. One object per manager,
/// refilled by every update (<see cref="EmaManagerBase{TModel}.LastUpdate"/>): reading it allocates nothing except
/// <see cref="ToString"/>. On the TorchSharp-op path (CUDA) the counts stay on the device until a member here is read,
/// which waits for the device once.
/// </summary>
public sealed class EmaStepReport
{
    private readonly StepTally _tally;
    private readonly string[] _profiles;
    private readonly double[] _decays;
    private readonly bool _distance;
    private readonly Action<EmaStepReport>? _onFirstNonFinite;
    private bool _firstSeen;

    internal EmaStepReport(string[] profiles, StepTally tally, bool distance, Action<EmaStepReport>? onFirstNonFinite)
    {
        _profiles = profiles;
        _tally = tally;
        _decays = new double[profiles.Length];
        Array.Fill(_decays, double.NaN);
        _distance = distance;
        _onFirstNonFinite = onFirstNonFinite;
    }

    /// <summary>The step of the last update (0 before the first).</summary>
    public long Step { get; private set; }

    /// <summary>
    /// Whether the model was switched to the EMA after this update (Switch EMA: <see cref="EmaOptions.SwitchEvery"/>, or a
    /// <c>SwitchInto</c> call since).
    /// </summary>
    public bool Switched { get; internal set; }

    /// <summary>Number of profiles; index <c>profile</c> of the members below.</summary>
    public int ProfileCount => _profiles.Length;

    /// <summary>The name of profile <paramref name="profile"/>.</summary>
    public string ProfileName(int profile) => _profiles[profile];

    /// <summary>The decay profile <paramref name="profile"/> was updated with at <see cref="Step"/>; NaN when its schedule skipped the step.</summary>
    public double Decay(int profile) => _decays[profile];

    /// <summary>Parameter elements that were NaN or infinite (counted once, however many profiles read them); their shadows were kept.</summary>
    public long NonFiniteElements
    {
        get
        {
            Settle();
            return _tally.NonFinite;
        }
    }

    /// <summary>Shadow elements, over all profiles, that were NaN or infinite and took the parameter's finite value.</summary>
    public long HealedElements
    {
        get
        {
            Settle();
            return _tally.Healed;
        }
    }

    /// <summary>The first few tensors (up to four) with non-finite parameter elements at this step.</summary>
    public IReadOnlyList<string> NonFiniteTensors
    {
        get
        {
            Settle();
            return _tally.NonFiniteNames;
        }
    }

    /// <summary>The first few tensors (up to four) whose shadows were healed at this step.</summary>
    public IReadOnlyList<string> HealedTensors
    {
        get
        {
            Settle();
            return _tally.HealedNames;
        }
    }

    /// <summary>
    /// The RMS distance between profile <paramref name="profile"/>'s shadow after the update and the live weights, over
    /// its finite floating-point elements (a health signal: it jumps when training diverges). NaN unless
    /// <see cref="EmaOptions.ReportDistance"/> is set and the profile was updated at this step.
    /// </summary>
    public double RmsDistance(int profile)
    {
        Settle();
        long n = _tally.Elements[profile];
        if (!_distance || double.IsNaN(_decays[profile]) || n == 0) return double.NaN;
        return Math.Sqrt(_tally.SumSquares[profile] / n);
    }

    /// <summary>One log line: step, decays, distances when measured, and what the guard found.</summary>
    public override string ToString()
    {
        var text = new StringBuilder();
        text.Append(CultureInfo.InvariantCulture, $"step {Step}");
        for (int k = 0; k < _profiles.Length; k++)
        {
            text.Append(_profiles[k].Length == 0 ? "; " : $"; {_profiles[k]}: ");
            text.Append(CultureInfo.InvariantCulture, $"decay {Decay(k):R}");
            if (_distance) text.Append(CultureInfo.InvariantCulture, $", rms {RmsDistance(k):G4}");
        }
        if (Switched) text.Append("; switched to the EMA");
        if (NonFiniteElements > 0) text.Append(CultureInfo.InvariantCulture, $"; non-finite {NonFiniteElements} in {string.Join(", ", NonFiniteTensors)}");
        if (HealedElements > 0) text.Append(CultureInfo.InvariantCulture, $"; healed {HealedElements} in {string.Join(", ", HealedTensors)}");
        return text.ToString();
    }

    // Starts the report of step `step`; the backends fill the tally.
    internal void Begin(long step, ReadOnlySpan<double> decays)
    {
        _tally.Clear();
        Step = step;
        Switched = false;
        decays.CopyTo(_decays);
    }

    // After the backends ran: tells the first non-finite step, unless the counts are still on a device (then the first
    // read does).
    internal void End()
    {
        if (_tally.Pending is null) NoteFirst();
    }

    private void Settle()
    {
        if (_tally.Pending is null) return;
        _tally.Settle();
        NoteFirst();
    }

    private void NoteFirst()
    {
        if (_firstSeen || _tally.NonFinite == 0) return;
        _firstSeen = true;
        _onFirstNonFinite?.Invoke(this);
    }
}

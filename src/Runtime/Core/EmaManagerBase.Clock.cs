using System;

namespace EmaGen;

// The clock a manager's schedules read: updates (Update(model)) or training samples seen (Update(model, samples)).
// A manager runs on one of them for its whole life, checkpoints included, so a schedule never sees two time bases.
public abstract partial class EmaManagerBase<TModel>
{
    private EmaClock _clock;
    // Per profile: the samples seen at its last update, so an `every` profile's decay spans the samples it skipped.
    private long[]? _samplesAtUpdate;

    /// <summary>
    /// Applies one update on the samples clock: time advances by <paramref name="samples"/> (the global batch, all
    /// ranks together, on the sharded manager), and the half-life and power-function schedules read their time in
    /// samples: EDM2's power function <c>β = (1 − n/t)^(γ+1)</c> with t the samples seen after this batch, EDM's
    /// half-life in samples with its ramp-up over the samples seen before it. A constant decay is per update; the
    /// <c>startafter</c> and <c>every</c> wrappers keep counting updates. Otherwise as <see cref="Update(TModel)"/>.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="samples"/> is not positive.</exception>
    /// <exception cref="InvalidOperationException">This manager already counts updates (it ran or loaded <see cref="Update(TModel)"/> steps).</exception>
    /// <exception cref="NotSupportedException">A profile's schedule has no time base in samples (warmup, a per-call <c>every</c>, a schedule of your own).</exception>
    public void Update(TModel model, long samples)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(samples);
        Advance(model, samples);
    }

    /// <summary>Training samples seen by the updates so far on the samples clock (restored by <c>Load</c>); 0 on the step clock.</summary>
    public long SamplesSeen { get; private set; }

    // The step clock's decays (the clock is fixed once an update went through, in Advance).
    private bool StepDecays(long step, double[] decays)
    {
        if (_clock == EmaClock.Samples) throw MixedClocks(EmaClock.Steps);
        bool any = false;
        for (int k = 0; k < _profiles.Length; k++)
        {
            var schedule = _schedules[k];
            decays[k] = schedule.UpdatesAt(step) ? schedule.DecayAt(step) : double.NaN;
            any |= !double.IsNaN(decays[k]);
        }
        return any;
    }

    // The samples clock's decays, before anything is written (a schedule without samples throws here).
    private bool SampleDecays(long step, long samples, double[] decays)
    {
        if (_clock == EmaClock.Steps) throw MixedClocks(EmaClock.Samples);
        if (_clock == EmaClock.None)
        {
            foreach (var schedule in _schedules) SampleTime.Check(schedule);
        }
        _samplesAtUpdate ??= new long[_profiles.Length];
        long seen = checked(SamplesSeen + samples);
        bool any = false;
        for (int k = 0; k < _profiles.Length; k++)
        {
            var schedule = _schedules[k];
            decays[k] = schedule.UpdatesAt(step) ? SampleTime.DecayAt(schedule, step, seen, seen - _samplesAtUpdate[k]) : double.NaN;
            any |= !double.IsNaN(decays[k]);
        }
        return any;
    }

    // After a written step: the clock moves on, and each profile that updated notes where.
    private void AdvanceSamples(long samples, double[] decays)
    {
        _clock = EmaClock.Samples;
        SamplesSeen += samples;
        for (int k = 0; k < decays.Length; k++)
        {
            if (!double.IsNaN(decays[k])) _samplesAtUpdate![k] = SamplesSeen;
        }
    }

    private InvalidOperationException MixedClocks(EmaClock wanted) => new(wanted == EmaClock.Samples
        ? $"This EMA counts updates (step {Step} on the step clock); Update(model, samples) cannot mix samples into it. Use Update(model) throughout, or build a new manager for the samples clock."
        : $"This EMA counts samples ({SamplesSeen} seen at step {Step}); call Update(model, samples) on every step, not Update(model).");

    // What a checkpoint records: null on the step clock, else the samples seen and the profile's last update.
    private (long Seen, long AtUpdate)? SampleState(int profile) =>
        _clock == EmaClock.Samples ? (SamplesSeen, _samplesAtUpdate![profile]) : null;

    // A load sets the clock the checkpoint was written on (a checkpoint at step 0 leaves it open).
    private void RestoreClock(long step, (long Seen, long AtUpdate)?[] states, int[] profiles)
    {
        bool samples = Array.Exists(states, s => s is not null);
        _clock = samples ? EmaClock.Samples : step > 0 ? EmaClock.Steps : EmaClock.None;
        SamplesSeen = 0;
        _samplesAtUpdate = null;
        if (!samples) return;
        _samplesAtUpdate = new long[_profiles.Length];
        for (int n = 0; n < profiles.Length; n++)
        {
            SamplesSeen = states[n]!.Value.Seen;
            _samplesAtUpdate[profiles[n]] = states[n]!.Value.AtUpdate;
        }
    }

    private enum EmaClock
    {
        None,
        Steps,
        Samples,
    }
}

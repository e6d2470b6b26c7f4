using System;

namespace EmaGen;

/// <summary>
/// The decays of the built-in schedules on the samples clock (<c>Update(model, samples: n)</c>): time is the number of
/// training samples seen, not the number of updates, so a changing batch size (curricula, gradient accumulation) gives
/// the average the paper defines. The half-life and the power function read their time in samples; a constant decay
/// is per update either way; the wrappers keep counting updates (<c>startafter</c> copies for its first N updates,
/// <c>every</c> updates every K-th call and spans the samples since its last update). Unlike on the step clock, where
/// <c>startafter</c>'s inner schedule counts from its start, the inner schedule's time in samples is the run's: EDM2's
/// power function averages over every sample seen (its profile starts as a copy of the weights at that point either
/// way), and the samples seen before the start are not stored apart in a checkpoint. Kept apart from the schedules'
/// step formulas so that those stay pure functions of the step.
/// </summary>
internal static class SampleTime
{
    /// <summary>Throws <see cref="NotSupportedException"/> unless every part of <paramref name="schedule"/> has a time base in samples.</summary>
    public static void Check(EmaSchedule schedule)
    {
        switch (schedule)
        {
            case StartAfterSchedule s: Check(s.Inner); break;
            case UpdateEverySchedule { PerCall: false } e: Check(e.Inner); break;
            case ConstantSchedule or PowerFunctionSchedule or HalfLifeSchedule: break;
            default: DecayAt(schedule, 1, 1, 1); break;
        }
    }

    /// <summary>
    /// The decay of <paramref name="schedule"/> for update number <paramref name="step"/>, after which
    /// <paramref name="samples"/> samples have been seen, <paramref name="batch"/> of them (&gt; 0) since this schedule's
    /// previous update.
    /// </summary>
    /// <exception cref="NotSupportedException">The schedule has no time base in samples.</exception>
    public static double DecayAt(EmaSchedule schedule, long step, long samples, long batch) => schedule switch
    {
        ConstantSchedule c => c.Decay,
        // EDM2: power_function_beta(std, t_next = cur_nimg, t_delta = batch_size), cur_nimg counting this batch.
        PowerFunctionSchedule p => Math.Pow(1 - (double)batch / samples, p.Gamma + 1),
        // EDM: the half-life in images, ramped up to ratio × cur_nimg, where cur_nimg counts the images before this batch.
        HalfLifeSchedule h => Math.Pow(0.5, batch / Math.Max(h.RampUpRatio is { } r ? Math.Min(h.Steps, (samples - batch) * r) : h.Steps, 1e-8)),
        StartAfterSchedule s => step <= s.Steps ? 0.0 : DecayAt(s.Inner, step - s.Steps, samples, batch),
        // The product of the inner decays over the skipped updates is the inner decay over all their samples (exact for
        // the power function and a half-life without ramp-up: both telescope), which is what `batch` spans here.
        UpdateEverySchedule { PerCall: false } e => DecayAt(e.Inner, step, samples, batch),
        _ => throw new NotSupportedException(
            $"The schedule {schedule.Describe()} has no time base in samples; Update(model, samples) takes constant, halflife and power schedules (optionally under startafter or every without percall)."),
    };
}

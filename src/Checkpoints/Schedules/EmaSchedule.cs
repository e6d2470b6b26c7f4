using System;
using System.Globalization;

namespace EmaGen;

/// <summary>
/// A decay schedule: a pure function of the update step (1 for the first update after the manager was built or
/// loaded from step 0), made by the factories below or <see cref="EmaScheduleParser"/>. <see cref="Describe"/> is its
/// canonical text, stored in checkpoints so that resuming with a different schedule is caught; two schedules are equal
/// when they are of one type and describe themselves alike. On the samples clock (<c>Update(model, samples)</c>) the
/// built-in schedules read their time in samples instead (SampleTime); the wrappers keep counting updates.
/// </summary>
public abstract class EmaSchedule
{
    /// <summary>For a schedule of your own: immutable, a pure function of the step, with a <see cref="Describe"/> that names every setting.</summary>
    protected EmaSchedule()
    {
    }

    /// <summary>The decay for update number <paramref name="step"/> (≥ 1): weight of the old average, in [0, 1].</summary>
    public abstract double DecayAt(long step);

    /// <summary>Whether the update at <paramref name="step"/> runs at all (only <see cref="UpdateEvery"/> skips steps).</summary>
    public virtual bool UpdatesAt(long step) => true;

    /// <summary>How many steps the update at <paramref name="step"/> stands for (the interval of <see cref="UpdateEvery"/>, else 1).</summary>
    public virtual int StepsPerUpdate(long step) => 1;

    /// <summary>
    /// The averaging horizon at <paramref name="step"/>: the number of steps over which the weight of an iterate halves
    /// at the decay applied there (per step: <c>decay^(1/StepsPerUpdate)</c>). 0 for a copy, infinity for decay 1.
    /// </summary>
    public double HalfLifeAt(long step)
    {
        double decay = DecayAt(step);
        if (decay <= 0) return 0;
        if (decay >= 1) return double.PositiveInfinity;
        return StepsPerUpdate(step) * Math.Log(0.5) / Math.Log(decay);
    }

    /// <summary>
    /// BEMA's bias-correction weight α for the update at <paramref name="step"/> (0 for schedules without one): the
    /// weights a user reads are <c>ema + α·(θ − θ₀)</c>. Only <see cref="Bema"/> and the wrappers around it have one.
    /// </summary>
    internal virtual double AlphaAt(long step) => 0;

    /// <summary>Whether this schedule is BEMA's (possibly wrapped): its profile keeps θ₀ and reads corrected weights.</summary>
    internal virtual bool IsBiasCorrected => false;

    /// <summary>Canonical description, e.g. <c>Constant(decay=0.9999)</c>.</summary>
    public abstract string Describe();

    public sealed override string ToString() => Describe();

    public sealed override bool Equals(object? obj) => obj is EmaSchedule other && other.GetType() == GetType() && other.Describe() == Describe();

    public sealed override int GetHashCode() => Describe().GetHashCode(StringComparison.Ordinal);

    public static bool operator ==(EmaSchedule? left, EmaSchedule? right) => left is null ? right is null : left.Equals(right);

    public static bool operator !=(EmaSchedule? left, EmaSchedule? right) => !(left == right);

    /// <summary>A constant decay.</summary>
    public static EmaSchedule Constant(double decay) => new ConstantSchedule(decay);

    /// <summary>diffusers/timm warmup: <c>1 − (1 + s/invGamma)^−power</c>, copying while s ≤ 0, clamped to [minDecay, maxDecay].</summary>
    public static EmaSchedule Warmup(double invGamma = 1.0, double power = 2.0 / 3.0, double minDecay = 0.0, double maxDecay = 0.9999, long updateAfterStep = 0) =>
        new WarmupSchedule(invGamma, power, minDecay, maxDecay, updateAfterStep);

    /// <summary>A half-life in update steps, optionally with EDM's ramp-up (half-life ≤ ratio × step).</summary>
    public static EmaSchedule HalfLife(double steps, double? rampUpRatio = null) => new HalfLifeSchedule(steps, rampUpRatio);

    /// <summary>EDM2's power-function EMA <c>β = (1 − 1/t)^(γ+1)</c> for relative standard deviation σ_rel.</summary>
    public static EmaSchedule PowerFunction(double sigmaRel) => new PowerFunctionSchedule(PowerFunctionSchedule.GammaFromSigmaRel(sigmaRel));

    /// <summary>
    /// BEMA (Block &amp; Zhang 2025, arXiv 2508.00180): the EMA's new-iterate weight <c>β_t = max((ρ + γt)^−κ, β_min)</c>
    /// (decay <c>1 − β_t</c>) and the bias correction <c>α_t = (ρ + γt)^−η</c>; a profile with it reads
    /// <c>ema + α·(θ − θ₀)</c>, θ₀ the weights at the last copy step. Burn-in is <see cref="StartAfter"/>, an update every
    /// φ steps <see cref="UpdateEvery"/> with perCall.
    /// </summary>
    public static EmaSchedule Bema(double kappa = 0.5, double eta = 0.2, double rho = 10, double gamma = 1, double betaMin = 0) =>
        new BemaSchedule(kappa, eta, rho, gamma, betaMin);

    /// <summary>Copies the parameters (decay 0) until step <paramref name="steps"/>, then runs <paramref name="inner"/> counting from there.</summary>
    public static EmaSchedule StartAfter(long steps, EmaSchedule inner) => new StartAfterSchedule(inner, steps);

    /// <summary>
    /// Updates every <paramref name="interval"/> steps with the product of <paramref name="inner"/>'s per-step decays
    /// over the skipped steps, so the averaging horizon does not change; <paramref name="perCall"/> applies the inner
    /// decay of the current step unchanged instead, as ema-pytorch does (for reproducing old runs).
    /// </summary>
    public static EmaSchedule UpdateEvery(int interval, EmaSchedule inner, bool perCall = false) => new UpdateEverySchedule(inner, interval, perCall);

    internal static string Number(double value) => value.ToString("R", CultureInfo.InvariantCulture);

    internal static void CheckDecay(double decay, string name)
    {
        if (!(decay >= 0 && decay <= 1)) throw new ArgumentOutOfRangeException(name, decay, "A decay must lie in [0, 1].");
    }
}

/// <summary><c>decay</c> at every step.</summary>
internal sealed class ConstantSchedule : EmaSchedule
{
    public ConstantSchedule(double decay)
    {
        CheckDecay(decay, nameof(decay));
        Decay = decay;
    }

    public double Decay { get; }

    public override double DecayAt(long step) => Decay;

    public override string Describe() => $"Constant(decay={Number(Decay)})";
}

/// <summary>
/// diffusers' <c>EMAModel.get_decay</c> (and timm's warmup): with <c>s = max(0, step − updateAfterStep − 1)</c>, the
/// decay is 0 (a copy) while s ≤ 0, else <c>1 − (1 + s/invGamma)^−power</c> clamped to [minDecay, maxDecay].
/// <see cref="MaxDecay"/> is the configured ceiling; the decay actually applied is <c>EmaManager.CurrentDecay</c>.
/// </summary>
internal sealed class WarmupSchedule : EmaSchedule
{
    public WarmupSchedule(double invGamma, double power, double minDecay, double maxDecay, long updateAfterStep)
    {
        if (!(invGamma > 0)) throw new ArgumentOutOfRangeException(nameof(invGamma), invGamma, "invGamma must be positive.");
        if (!(power > 0)) throw new ArgumentOutOfRangeException(nameof(power), power, "power must be positive.");
        CheckDecay(minDecay, nameof(minDecay));
        CheckDecay(maxDecay, nameof(maxDecay));
        if (minDecay > maxDecay) throw new ArgumentOutOfRangeException(nameof(minDecay), minDecay, "minDecay must not exceed maxDecay.");
        if (updateAfterStep < 0) throw new ArgumentOutOfRangeException(nameof(updateAfterStep), updateAfterStep, "updateAfterStep must not be negative.");
        (InvGamma, Power, MinDecay, MaxDecay, UpdateAfterStep) = (invGamma, power, minDecay, maxDecay, updateAfterStep);
    }

    public double InvGamma { get; }
    public double Power { get; }
    public double MinDecay { get; }
    public double MaxDecay { get; }
    public long UpdateAfterStep { get; }

    public override double DecayAt(long step)
    {
        long s = Math.Max(0, step - UpdateAfterStep - 1);
        if (s <= 0) return 0.0;
        double value = 1 - Math.Pow(1 + s / InvGamma, -Power);
        return Math.Max(MinDecay, Math.Min(value, MaxDecay));
    }

    public override string Describe() =>
        $"Warmup(invGamma={Number(InvGamma)}, power={Number(Power)}, minDecay={Number(MinDecay)}, maxDecay={Number(MaxDecay)}, updateAfterStep={UpdateAfterStep})";
}

/// <summary>
/// Half-life in update steps: <c>0.5^(1/h)</c>. With EDM's ramp-up (Karras et al. 2022) the half-life grows with
/// training, <c>h = min(halfLife, rampUpRatio × step)</c>, so early weights are forgotten quickly.
/// </summary>
internal sealed class HalfLifeSchedule : EmaSchedule
{
    public HalfLifeSchedule(double steps, double? rampUpRatio)
    {
        if (!(steps > 0)) throw new ArgumentOutOfRangeException(nameof(steps), steps, "The half-life must be positive.");
        if (rampUpRatio is { } r && !(r > 0)) throw new ArgumentOutOfRangeException(nameof(rampUpRatio), r, "The ramp-up ratio must be positive.");
        (Steps, RampUpRatio) = (steps, rampUpRatio);
    }

    public double Steps { get; }
    public double? RampUpRatio { get; }

    public override double DecayAt(long step)
    {
        double h = RampUpRatio is { } r ? Math.Min(Steps, r * step) : Steps;
        return Math.Pow(0.5, 1.0 / Math.Max(h, 1e-8));
    }

    public override string Describe() => $"HalfLife(steps={Number(Steps)}, rampUpRatio={(RampUpRatio is { } r ? Number(r) : "none")})";
}

/// <summary>
/// EDM2's power-function EMA (Karras et al. 2024): <c>β_t = (1 − Δt/t)^(γ+1)</c> with t the update step and Δt = 1
/// per update, so the average weighs iterate τ in proportion to τ^γ. σ_rel and γ are two names for the same width.
/// </summary>
internal sealed class PowerFunctionSchedule : EmaSchedule
{
    public PowerFunctionSchedule(double gamma)
    {
        if (!(gamma > -1) || double.IsInfinity(gamma)) throw new ArgumentOutOfRangeException(nameof(gamma), gamma, "γ must be a finite number above -1.");
        Gamma = gamma;
    }

    public double Gamma { get; }

    /// <summary>The relative standard deviation of the averaging profile, <c>sqrt((γ+1) / ((γ+2)² (γ+3)))</c>.</summary>
    public double SigmaRel => SigmaRelFromGamma(Gamma);

    public override double DecayAt(long step) => step <= 0 ? 0 : Math.Pow(1 - 1.0 / step, Gamma + 1);

    public override string Describe() => $"PowerFunction(gamma={Number(Gamma)})";

    /// <summary>The supremum of σ_rel: the width of γ = 0, the uniform average (EDM2's bound).</summary>
    public static readonly double MaxSigmaRel = Math.Sqrt(1.0 / 12);

    public static double SigmaRelFromGamma(double gamma) => Math.Sqrt((gamma + 1) / ((gamma + 2) * (gamma + 2) * (gamma + 3)));

    /// <summary>γ for σ_rel: the largest real root of <c>γ³ + 7γ² + (16 − σ_rel⁻²)γ + (12 − σ_rel⁻²) = 0</c> (EDM2's sigma_rel_to_gamma).</summary>
    public static double GammaFromSigmaRel(double sigmaRel)
    {
        // EDM2's range: for σ_rel below sqrt(1/12) ≈ 0.2887 the largest root is positive (γ > 0); at and above it no
        // power-function profile (γ > 0) is that wide. EDM2's own runs use 0.05 to 0.2.
        if (!(sigmaRel > 0 && sigmaRel < MaxSigmaRel))
        {
            throw new ArgumentOutOfRangeException(nameof(sigmaRel), sigmaRel, $"σ_rel must lie in (0, sqrt(1/12) ≈ {MaxSigmaRel:F4}).");
        }
        double t = 1.0 / (sigmaRel * sigmaRel);
        double F(double g) => ((g + 7) * g + (16 - t)) * g + (12 - t);
        // f(0) = 12 − t < 0 for σ_rel < 0.2887; f grows without bound, so the largest root is in (0, hi).
        double lo = 0, hi = 1;
        while (F(hi) < 0) hi *= 2;
        for (int i = 0; i < 200 && hi - lo > 1e-13 * Math.Max(1, hi); i++)
        {
            double mid = 0.5 * (lo + hi);
            if (F(mid) < 0) lo = mid; else hi = mid;
        }
        return 0.5 * (lo + hi);
    }
}

/// <summary>Copies the parameters (decay 0) until step <see cref="Steps"/>, then runs <see cref="Inner"/> counting from there.</summary>
internal sealed class StartAfterSchedule : EmaSchedule
{
    public StartAfterSchedule(EmaSchedule inner, long steps)
    {
        if (steps < 0) throw new ArgumentOutOfRangeException(nameof(steps), steps, "steps must not be negative.");
        (Inner, Steps) = (inner ?? throw new ArgumentNullException(nameof(inner)), steps);
    }

    public EmaSchedule Inner { get; }
    public long Steps { get; }

    public override double DecayAt(long step) => step <= Steps ? 0.0 : Inner.DecayAt(step - Steps);

    public override bool UpdatesAt(long step) => step <= Steps || Inner.UpdatesAt(step - Steps);

    public override int StepsPerUpdate(long step) => step <= Steps ? 1 : Inner.StepsPerUpdate(step - Steps);

    internal override double AlphaAt(long step) => step <= Steps ? 0.0 : Inner.AlphaAt(step - Steps);

    internal override bool IsBiasCorrected => Inner.IsBiasCorrected;

    public override string Describe() => $"StartAfter({Steps}, {Inner.Describe()})";
}

/// <summary>
/// Updates only every <see cref="Interval"/> steps. The decay applied then is the product of the inner schedule's
/// per-step decays over the skipped steps, which keeps the averaging horizon of the per-step schedule: <c>d^k</c> for
/// a constant or half-life, and exactly EDM2's Δt = k form <c>(1 − k/t)^(γ+1)</c> for the power function (the product
/// telescopes). <see cref="PerCall"/> instead applies the inner decay of the current step unchanged, as ema-pytorch
/// does, for users reproducing old runs (each update then forgets only what one step should, so the horizon in steps grows k-fold).
/// </summary>
internal sealed class UpdateEverySchedule : EmaSchedule
{
    public UpdateEverySchedule(EmaSchedule inner, int interval, bool perCall = false)
    {
        if (interval < 1) throw new ArgumentOutOfRangeException(nameof(interval), interval, "The interval must be at least 1.");
        (Inner, Interval, PerCall) = (inner ?? throw new ArgumentNullException(nameof(inner)), interval, perCall);
    }

    public EmaSchedule Inner { get; }
    public int Interval { get; }
    public bool PerCall { get; }

    public override bool UpdatesAt(long step) => step % Interval == 0;

    public override int StepsPerUpdate(long step) => Interval;

    public override double DecayAt(long step)
    {
        if (PerCall) return Inner.DecayAt(step);
        double product = 1.0;
        for (long s = Math.Max(1, step - Interval + 1); s <= step; s++) product *= Inner.DecayAt(s);
        return product;
    }

    internal override double AlphaAt(long step) => Inner.AlphaAt(step);

    internal override bool IsBiasCorrected => Inner.IsBiasCorrected;

    public override string Describe() => $"UpdateEvery({Interval}, {(PerCall ? "perCall" : "rescaled")}, {Inner.Describe()})";
}

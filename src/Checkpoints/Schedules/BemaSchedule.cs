using System;

namespace EmaGen;

/// <summary>
/// BEMA's schedule (Block &amp; Zhang 2025, arXiv 2508.00180): with <c>u = ρ + γ·t</c>, the EMA gives the new iterate
/// the weight <c>β_t = max(u^−κ, β_min)</c>, so the decay is <c>1 − β_t</c>, and the bias correction is
/// <c>α_t = u^−η</c>. t is the update step counted from the burn-in (<see cref="StartAfterSchedule"/> shifts it), as
/// in the authors' reference code.
/// </summary>
internal sealed class BemaSchedule : EmaSchedule
{
    public BemaSchedule(double kappa, double eta, double rho, double gamma, double betaMin)
    {
        if (!(kappa >= 0) || double.IsInfinity(kappa)) throw new ArgumentOutOfRangeException(nameof(kappa), kappa, "κ must be a finite number ≥ 0.");
        if (!(eta >= 0) || double.IsInfinity(eta)) throw new ArgumentOutOfRangeException(nameof(eta), eta, "η must be a finite number ≥ 0.");
        if (!(gamma >= 0) || double.IsInfinity(gamma)) throw new ArgumentOutOfRangeException(nameof(gamma), gamma, "γ must be a finite number ≥ 0.");
        // u = ρ + γt ≥ ρ for every t ≥ 0; u ≥ 1 keeps β and α in (0, 1].
        if (!(rho >= 1) || double.IsInfinity(rho)) throw new ArgumentOutOfRangeException(nameof(rho), rho, "ρ must be a finite number ≥ 1.");
        CheckDecay(betaMin, nameof(betaMin));
        (Kappa, Eta, Rho, Gamma, BetaMin) = (kappa, eta, rho, gamma, betaMin);
    }

    public double Kappa { get; }
    public double Eta { get; }
    public double Rho { get; }
    public double Gamma { get; }
    public double BetaMin { get; }

    public override double DecayAt(long step) => 1 - Math.Max(Math.Pow(Rho + Gamma * Math.Max(step, 0), -Kappa), BetaMin);

    internal override double AlphaAt(long step) => Math.Pow(Rho + Gamma * Math.Max(step, 0), -Eta);

    internal override bool IsBiasCorrected => true;

    public override string Describe() =>
        $"Bema(kappa={Number(Kappa)}, eta={Number(Eta)}, rho={Number(Rho)}, gamma={Number(Gamma)}, betaMin={Number(BetaMin)})";
}

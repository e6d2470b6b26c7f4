using System;
using System.Collections.Generic;

namespace EmaGen;

/// <summary>
/// The least-squares fit of EDM2's post-hoc EMA (Karras et al. 2024, section 3.2): a power-function profile (γ, t)
/// weighs iterate τ ∈ [0, t] in proportion to τ^γ; given snapshots of profiles (γ_i, t_i) the target profile
/// (γ_r, t_r) is approximated by Σ x_i p_i, with x from the Gram system A x = b over the profiles' inner products
/// (A_ij = ⟨p_i, p_j⟩, b_i = ⟨p_i, p_r⟩), then normalised to sum 1 so that constant weights are reproduced exactly.
/// </summary>
internal static class PostHocSolver
{
    /// <summary>
    /// ⟨p_a, p_b⟩ for the normalised profiles p(τ) = (γ+1) τ^γ / t^(γ+1) on [0, t]:
    /// (γ_a+1)(γ_b+1)(t_a/t_b)^e / ((γ_a+γ_b+1) max(t_a, t_b)), e = γ_b when t_a &lt; t_b, else −γ_a.
    /// </summary>
    public static double InnerProduct(double stepA, double gammaA, double stepB, double gammaB)
    {
        double exponent = stepA < stepB ? gammaB : -gammaA;
        return (gammaA + 1) * (gammaB + 1) * Math.Pow(stepA / stepB, exponent) / ((gammaA + gammaB + 1) * Math.Max(stepA, stepB));
    }

    /// <summary>
    /// Coefficients for the snapshot profiles <paramref name="basis"/> (step, γ) that best reproduce the profile γ =
    /// <paramref name="gamma"/> at <paramref name="atStep"/>, normalised to sum 1. Every basis step must lie in
    /// (0, <paramref name="atStep"/>]: later snapshots hold iterates the target must not see.
    /// </summary>
    /// <exception cref="ArgumentException">The basis is empty, has a step outside (0, atStep], or is degenerate (two equal profiles).</exception>
    public static double[] Solve(IReadOnlyList<(long Step, double Gamma)> basis, long atStep, double gamma)
    {
        ArgumentNullException.ThrowIfNull(basis);
        if (basis.Count == 0) throw new ArgumentException("Post-hoc EMA needs at least one snapshot at or before the target step.", nameof(basis));
        int n = basis.Count;
        var a = new double[n * n];
        var b = new double[n];
        for (int i = 0; i < n; i++)
        {
            var (ti, gi) = basis[i];
            if (ti <= 0 || ti > atStep)
            {
                throw new ArgumentException($"Snapshot step {ti} lies outside (0, {atStep}]; a post-hoc EMA at step {atStep} may only use earlier snapshots.", nameof(basis));
            }
            for (int j = 0; j < n; j++) a[i * n + j] = InnerProduct(ti, gi, basis[j].Step, basis[j].Gamma);
            b[i] = InnerProduct(ti, gi, atStep, gamma);
        }
        // LU with partial pivoting in double precision, the algorithm of LAPACK's gesv (which EDM2 uses through numpy).
        var x = SolveLinear(a, b, n) ?? throw new ArgumentException(
            "The snapshot profiles are linearly dependent (two snapshots of the same γ at the same step?); remove the duplicates.", nameof(basis));
        double sum = 0;
        foreach (var v in x) sum += v;
        if (!double.IsFinite(sum) || sum == 0) throw new ArgumentException("The post-hoc coefficients do not normalise (sum is zero or not finite).", nameof(basis));
        for (int i = 0; i < n; i++) x[i] /= sum;
        return x;
    }

    // Solves the n×n row-major system a x = b in place; null when a is singular.
    private static double[]? SolveLinear(double[] a, double[] b, int n)
    {
        for (int k = 0; k < n; k++)
        {
            int pivot = k;
            for (int i = k + 1; i < n; i++)
            {
                if (Math.Abs(a[i * n + k]) > Math.Abs(a[pivot * n + k])) pivot = i;
            }
            if (a[pivot * n + k] == 0 || !double.IsFinite(a[pivot * n + k])) return null;
            if (pivot != k)
            {
                for (int j = 0; j < n; j++) (a[k * n + j], a[pivot * n + j]) = (a[pivot * n + j], a[k * n + j]);
                (b[k], b[pivot]) = (b[pivot], b[k]);
            }
            for (int i = k + 1; i < n; i++)
            {
                double factor = a[i * n + k] / a[k * n + k];
                a[i * n + k] = factor;
                for (int j = k + 1; j < n; j++) a[i * n + j] -= factor * a[k * n + j];
                b[i] -= factor * b[k];
            }
        }
        var x = new double[n];
        for (int i = n - 1; i >= 0; i--)
        {
            double v = b[i];
            for (int j = i + 1; j < n; j++) v -= a[i * n + j] * x[j];
            x[i] = v / a[i * n + i];
        }
        return x;
    }

    /// <summary>γ of a schedule whose average is a power-function profile: EDM2's form, optionally every k steps (rescaled), else null.</summary>
    public static double? PowerFunctionGamma(EmaSchedule schedule) => schedule switch
    {
        PowerFunctionSchedule p => p.Gamma,
        UpdateEverySchedule { PerCall: false, Inner: PowerFunctionSchedule p } => p.Gamma,
        _ => null,
    };
}

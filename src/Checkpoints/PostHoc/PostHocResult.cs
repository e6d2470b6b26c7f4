using System.Collections.Generic;

namespace EmaGen;

/// <summary>What <c>PostHocEma.Synthesize</c> computed: the target and each snapshot profile's coefficient (summing to 1).</summary>
public sealed record PostHocResult(double SigmaRel, double Gamma, long AtStep, IReadOnlyList<(PostHocSnapshot Snapshot, double Coefficient)> Terms, int IgnoredLaterSnapshots)
{
    public override string ToString() =>
        $"sigma_rel {SigmaRel} (gamma {Gamma:F4}) at step {AtStep}: {Terms.Count} snapshot profiles, {IgnoredLaterSnapshots} later ones ignored";
}

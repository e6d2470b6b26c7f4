using System.Collections.Generic;
using EmaGen.Dcp;
using TorchSharp;

namespace EmaGen;

public static partial class PostHocEma
{
    /// <summary>
    /// Reconstructs the power-function EMA of width <paramref name="sigmaRel"/> at step <paramref name="atStep"/> from
    /// the snapshots in <paramref name="snapshotsDir"/> taken at or before it (later ones are ignored), and writes it to
    /// <paramref name="outputDir"/> as an EMA checkpoint that <see cref="EmaManagerBase{TModel}.Load"/> reads (schedule
    /// <c>PowerFunction(σ_rel)</c>, step <paramref name="atStep"/>). Sums are taken in fp32 one output tensor at a time,
    /// streamed to the file: memory is one sum plus one snapshot tensor, whatever the model size.
    /// <paramref name="atStep"/> is best a snapshot step, as in EDM2.
    /// </summary>
    /// <exception cref="System.ArgumentException">No usable snapshot, degenerate profiles, or snapshots that disagree on names or shapes.</exception>
    /// <exception cref="CheckpointFormatException">A snapshot folder is unreadable.</exception>
    public static PostHocResult Synthesize(string snapshotsDir, double sigmaRel, long atStep, string outputDir,
        string prefix = EmaCheckpoint.DefaultPrefix, torch.ScalarType dtype = torch.ScalarType.Float32) =>
        Synthesize(snapshotsDir, [(sigmaRel, outputDir)], atStep, prefix, dtype)[0];

    /// <summary>
    /// Several widths from one set of snapshots, each written as in the single-width form (the snapshots' tensors are
    /// read once per width, so memory stays one sum plus one snapshot tensor).
    /// </summary>
    public static IReadOnlyList<PostHocResult> Synthesize(string snapshotsDir, IReadOnlyList<(double SigmaRel, string OutputDir)> targets, long atStep,
        string prefix = EmaCheckpoint.DefaultPrefix, torch.ScalarType dtype = torch.ScalarType.Float32)
    {
        if (!DTypes.IsFloatingPoint(dtype)) throw new System.ArgumentException($"The output is floating point; {dtype} is not.", nameof(dtype));
        return PostHocSynthesis.Run(snapshotsDir, targets, atStep, prefix, DTypes.Of(dtype).Row);
    }
}

using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using EmaGen.Dcp;

namespace EmaGen;

/// <summary>One profile stored in a post-hoc snapshot folder: a basis profile (step, γ) of the reconstruction.</summary>
/// <param name="Folder">The snapshot folder.</param>
/// <param name="Profile">The profile's key segment inside the folder (the profile name, or <c>ema</c> for an unnamed one).</param>
/// <param name="Step">The update step the snapshot was taken at (t_i).</param>
/// <param name="Gamma">The profile's power-function exponent γ_i.</param>
public sealed record PostHocSnapshot(string Folder, string Profile, long Step, double Gamma)
{
    internal const string FolderPrefix = "step-";
    internal const string Format = "emagen.posthoc/1";
    internal const string UnnamedProfile = "ema";

    /// <summary>The profile's relative standard deviation σ_rel.</summary>
    public double SigmaRel => PowerFunctionSchedule.SigmaRelFromGamma(Gamma);

    internal static string FolderName(long step) => FolderPrefix + step.ToString("D10", CultureInfo.InvariantCulture);

    /// <summary>Every snapshot profile in <paramref name="snapshotsDir"/>, ordered by step then profile.</summary>
    /// <exception cref="CheckpointFormatException">A <c>step-*</c> folder is not a readable post-hoc snapshot.</exception>
    /// <exception cref="DirectoryNotFoundException">The folder does not exist.</exception>
    public static IReadOnlyList<PostHocSnapshot> List(string snapshotsDir)
    {
        if (!Directory.Exists(snapshotsDir)) throw new DirectoryNotFoundException($"{snapshotsDir}: no such snapshot folder.");
        var result = new List<PostHocSnapshot>();
        // DcpWriter's staging folders start with '.', so a snapshot being written is never read half-done.
        foreach (var folder in Directory.GetDirectories(snapshotsDir, FolderPrefix + "*").Order(StringComparer.Ordinal))
        {
            var snapshots = Read(DcpFolder.Open(folder), folder).ToList();
            // The folder name is what people see and sort by; a renamed folder must not pass for another step.
            var named = Path.GetFileName(folder)[FolderPrefix.Length..];
            if (snapshots.Count > 0 && (!long.TryParse(named, NumberStyles.None, CultureInfo.InvariantCulture, out var step) || step != snapshots[0].Step))
            {
                throw new CheckpointFormatException($"{folder}: the folder is named for step '{named}', but its '{CheckpointKeys.Of("", CheckpointKeys.Step)}' is {snapshots[0].Step}.");
            }
            result.AddRange(snapshots);
        }
        return result.OrderBy(s => s.Step).ThenBy(s => s.Profile, StringComparer.Ordinal).ToList();
    }

    internal static IEnumerable<PostHocSnapshot> Read(DcpFolder reader, string folder)
    {
        string Text(string key) => reader.ReadValue(key) as string ?? throw new CheckpointFormatException($"{folder}: '{key}' is not a string.");
        var formatKey = CheckpointKeys.Of("", CheckpointKeys.Format);
        var stepKey = CheckpointKeys.Of("", CheckpointKeys.Step);
        if (reader.Metadata.Find(formatKey) is null || Text(formatKey) != Format)
        {
            throw new CheckpointFormatException($"{folder}: not a post-hoc EMA snapshot (expected '{formatKey}' = '{Format}').");
        }
        if (reader.Metadata.Find(stepKey) is null) throw new CheckpointFormatException($"{folder}: '{stepKey}' is missing.");
        var step = reader.ReadValue(stepKey) as long? ?? throw new CheckpointFormatException($"{folder}: '{stepKey}' is not an integer.");
        if (step <= 0) throw new CheckpointFormatException($"{folder}: '{stepKey}' is {step}, expected a positive step.");
        foreach (var profile in Text(CheckpointKeys.Of("", CheckpointKeys.Profiles)).Split(','))
        {
            var key = CheckpointKeys.Of(profile + ".", CheckpointKeys.Gamma);
            if (reader.Metadata.Find(key) is null) throw new CheckpointFormatException($"{folder}: '{key}' is missing.");
            var gamma = reader.ReadValue(key) as double? ?? throw new CheckpointFormatException($"{folder}: '{key}' is not a number.");
            if (!(gamma > -1) || double.IsInfinity(gamma)) throw new CheckpointFormatException($"{folder}: '{key}' is {gamma}, expected a finite γ above -1.");
            yield return new PostHocSnapshot(folder, profile, step, gamma);
        }
    }
}

using System;
using System.Collections.Generic;
using EmaGen.Dcp;

namespace EmaGen;

/// <summary>The key layout of an EMA checkpoint: <c>{prefix}{parameter name}</c> tensors plus <c>{prefix}_emagen.*</c> values.</summary>
internal static class EmaCheckpoint
{
    /// <summary>The default key prefix: the EMA's shadows under <c>ema.</c>, as PyTorch trainers name an EMA submodule.</summary>
    public const string DefaultPrefix = "ema.";

    /// <summary>The value marking an EmaGen EMA checkpoint (key <c>{prefix}_emagen.format</c>).</summary>
    public const string Format = "emagen.ema/1";

    /// <summary>One profile's values under <paramref name="prefix"/> (its shadows are keyed beside them): its stored state and format.</summary>
    internal static IEnumerable<KeyValuePair<string, object?>> ProfileState(string prefix, StoredState state)
    {
        yield return new(CheckpointKeys.Of(prefix, CheckpointKeys.Step), state.Step);
        yield return new(CheckpointKeys.Of(prefix, CheckpointKeys.Decay), state.ConfiguredDecay);
        yield return new(CheckpointKeys.Of(prefix, CheckpointKeys.CurrentDecay), state.CurrentDecay);
        yield return new(CheckpointKeys.Of(prefix, CheckpointKeys.Schedule), state.Schedule);
        if (state.Samples is { } samples)
        {
            yield return new(CheckpointKeys.Of(prefix, CheckpointKeys.Samples), samples.Seen);
            yield return new(CheckpointKeys.Of(prefix, CheckpointKeys.SamplesAtUpdate), samples.AtUpdate);
        }
        yield return new(CheckpointKeys.Of(prefix, CheckpointKeys.Format), Format);
    }

    /// <summary>
    /// The tied weights of one profile under <paramref name="prefix"/>: each alias with the name its tensor is stored
    /// under, as comma-separated <c>alias=owner</c> pairs, so a reader or an export can give the tensor every name again.
    /// </summary>
    internal static KeyValuePair<string, object?> AliasState(string prefix, IEnumerable<KeyValuePair<string, string>> aliases) =>
        new(CheckpointKeys.Of(prefix, CheckpointKeys.Aliases), string.Join(",", System.Linq.Enumerable.Select(aliases, a => $"{a.Key}={a.Value}")));

    /// <summary>The top-level keys of a multi-profile checkpoint: the profile list (comma-separated names), step and format.</summary>
    internal static IEnumerable<KeyValuePair<string, object?>> ManagerState(string prefix, long step, IEnumerable<string> profiles)
    {
        yield return new(CheckpointKeys.Of(prefix, CheckpointKeys.Profiles), string.Join(",", profiles));
        yield return new(CheckpointKeys.Of(prefix, CheckpointKeys.Step), step);
        yield return new(CheckpointKeys.Of(prefix, CheckpointKeys.Format), Format);
    }

    /// <summary>
    /// The profile names stored under <paramref name="prefix"/>, or null for a single-profile checkpoint. A multi-profile
    /// checkpoint must also hold its top-level <c>format</c> and <c>step</c>.
    /// </summary>
    internal static IReadOnlyList<string>? ReadProfileNames(IDcpValues reader, string directory, string prefix)
    {
        var key = CheckpointKeys.Of(prefix, CheckpointKeys.Profiles);
        if (reader.Metadata.Find(key) is null) return null;
        if (ReadValue<string>(reader, directory, key, "a comma-separated list of profile names") is not { Length: > 0 } text)
        {
            throw new CheckpointFormatException($"{directory}: '{key}' is not a comma-separated list of profile names.");
        }
        RequireFormat(reader, directory, prefix);
        ReadValue<long>(reader, directory, CheckpointKeys.Of(prefix, CheckpointKeys.Step), "an integer");
        return text.Split(',');
    }

    /// <summary>
    /// The manager state one profile's subtree stores: its step, the configured constant decay (NaN where there is none),
    /// the decay its last update applied (NaN before the first, and in checkpoints written before it was stored), and
    /// its schedule's canonical description, and on the samples clock the samples seen and those at its last update. Both managers and the post-hoc synthesis write it through
    /// <see cref="ProfileState"/>; loads read it through <see cref="ReadState"/>.
    /// </summary>
    internal sealed record StoredState(long Step, double ConfiguredDecay, double CurrentDecay, string Schedule, (long Seen, long AtUpdate)? Samples = null);

    /// <summary>
    /// Reads the <c>{prefix}_emagen.*</c> values of one profile. An EmaGen checkpoint (one with
    /// <c>{prefix}_emagen.format</c>) must hold every value its format needs: <c>emagen.ema/1</c> needs <c>step</c> and
    /// <c>decay</c>, and <c>schedule</c> unless it was written before schedules existed (then it is the constant
    /// decay, as those managers had). A folder with no <c>_emagen.*</c> value under the prefix at all is a plain
    /// state dict (say an EMA PyTorch wrote): null, and loading it keeps the manager's step. Anything between — some
    /// values but no format — is a damaged checkpoint.
    /// </summary>
    internal static StoredState? ReadState(IDcpValues reader, string directory, string prefix)
    {
        var statePrefix = prefix + CheckpointKeys.Segment;
        if (reader.Metadata.Find(CheckpointKeys.Of(prefix, CheckpointKeys.Format)) is null)
        {
            foreach (var e in reader.Entries)
            {
                if (e.Key.StartsWith(statePrefix, StringComparison.Ordinal) && e.Key.IndexOf('.', statePrefix.Length) < 0)
                {
                    throw new CheckpointFormatException($"{directory}: '{e.Key}' is present but '{CheckpointKeys.Of(prefix, CheckpointKeys.Format)}' is missing; the checkpoint is damaged.");
                }
            }
            return null;
        }
        RequireFormat(reader, directory, prefix);
        var stepKey = CheckpointKeys.Of(prefix, CheckpointKeys.Step);
        var decayKey = CheckpointKeys.Of(prefix, CheckpointKeys.Decay);
        var scheduleKey = CheckpointKeys.Of(prefix, CheckpointKeys.Schedule);
        long step = ReadValue<long>(reader, directory, stepKey, "an integer");
        if (step < 0) throw new CheckpointFormatException($"{directory}: '{stepKey}' is {step}, expected a step count of at least 0.");
        double decay = ReadDecay(reader, directory, decayKey);
        var currentKey = CheckpointKeys.Of(prefix, CheckpointKeys.CurrentDecay);
        double current = reader.Metadata.Find(currentKey) is null ? double.NaN : ReadDecay(reader, directory, currentKey);
        string schedule = reader.Metadata.Find(scheduleKey) is null
            ? EmaSchedule.Constant(decay).Describe()
            : ReadValue<string>(reader, directory, scheduleKey, "a string");
        return new StoredState(step, decay, current, schedule, ReadSamples(reader, directory, prefix, step));
    }

    // The samples clock of a profile: both values or neither, 0 ≤ at-update ≤ seen, and none at step 0.
    private static (long Seen, long AtUpdate)? ReadSamples(IDcpValues reader, string directory, string prefix, long step)
    {
        var seenKey = CheckpointKeys.Of(prefix, CheckpointKeys.Samples);
        var atKey = CheckpointKeys.Of(prefix, CheckpointKeys.SamplesAtUpdate);
        bool hasSeen = reader.Metadata.Find(seenKey) is not null, hasAt = reader.Metadata.Find(atKey) is not null;
        if (!hasSeen && !hasAt) return null;
        if (hasSeen != hasAt) throw new CheckpointFormatException($"{directory}: '{(hasSeen ? atKey : seenKey)}' is missing beside '{(hasSeen ? seenKey : atKey)}'; the checkpoint is damaged.");
        long seen = ReadValue<long>(reader, directory, seenKey, "an integer");
        long at = ReadValue<long>(reader, directory, atKey, "an integer");
        if (seen < step || seen <= 0) throw new CheckpointFormatException($"{directory}: '{seenKey}' is {seen}, expected at least one sample per update ({step} updates).");
        if (at < 0 || at > seen) throw new CheckpointFormatException($"{directory}: '{atKey}' is {at}, expected a count in [0, {seen}].");
        return (seen, at);
    }

    // NaN is what a profile stores before its first update (an update-every profile that sat the steps out) and where
    // there is no constant decay.
    private static double ReadDecay(IDcpValues reader, string directory, string key)
    {
        double decay = ReadValue<double>(reader, directory, key, "a number");
        if (!double.IsNaN(decay) && !(decay >= 0 && decay <= 1)) throw new CheckpointFormatException($"{directory}: '{key}' is {decay}, expected a decay in [0, 1].");
        return decay;
    }

    /// <summary>
    /// Reads and checks the stored state of every profile a load fills (each under its own prefix): a named profile must
    /// have its values, its schedule must be the manager's unless <paramref name="allowScheduleMismatch"/>, and all must
    /// have been saved at one step, which is returned (null for a plain state dict, which keeps the manager's step). The
    /// rules of the dense and the sharded manager's <c>Load</c>. <paramref name="states"/> receives each profile's stored
    /// state (null for a plain state dict), in order, for the caller to apply once the load has succeeded.
    /// </summary>
    internal static long? ReadProfileStates(IDcpValues reader, string directory,
        IEnumerable<(string Prefix, string Name, EmaSchedule Schedule)> profiles, bool named, bool allowScheduleMismatch,
        List<StoredState?> states)
    {
        long? step = null;
        foreach (var (profilePrefix, name, schedule) in profiles)
        {
            var state = ReadState(reader, directory, profilePrefix);
            states.Add(state);
            if (named && state is null)
            {
                throw new CheckpointFormatException($"{directory}: profile '{name}' has no '{CheckpointKeys.Of(profilePrefix, CheckpointKeys.Format)}'; the checkpoint is damaged.");
            }
            var expected = schedule.Describe();
            if (state is not null && state.Schedule != expected && !allowScheduleMismatch)
            {
                throw new ArgumentException(
                    $"{directory}: the checkpoint was written with schedule {state.Schedule}{(name.Length == 0 ? "" : $" for profile '{name}'")}, this manager uses {expected} (pass allowScheduleMismatch to load anyway).");
            }
            if (step is { } s && state is not null && s != state.Step)
            {
                throw new ArgumentException($"{directory}: the profiles were saved at different steps ({s} and {state.Step}).");
            }
            if (states.Count > 1 && states[0] is { } first && state is not null && first.Samples?.Seen != state.Samples?.Seen)
            {
                throw new CheckpointFormatException($"{directory}: the profiles were saved at different samples clocks ({first.Samples?.Seen.ToString() ?? "none"} and {state.Samples?.Seen.ToString() ?? "none"}).");
            }
            step ??= state?.Step;
        }
        return step;
    }

    /// <summary>A BEMA profile's α under <paramref name="prefix"/> (a finite number ≥ 0).</summary>
    internal static double ReadBemaAlpha(IDcpValues reader, string directory, string prefix)
    {
        var key = CheckpointKeys.Of(prefix, CheckpointKeys.BemaAlpha);
        double alpha = ReadValue<double>(reader, directory, key, "a number (a BEMA profile's α)");
        return double.IsFinite(alpha) && alpha >= 0 ? alpha : throw new CheckpointFormatException($"{directory}: '{key}' is {alpha}, expected a finite α ≥ 0.");
    }

    private static void RequireFormat(IDcpValues reader, string directory, string prefix)
    {
        var key = CheckpointKeys.Of(prefix, CheckpointKeys.Format);
        if (reader.Metadata.Find(key) is null) throw new CheckpointFormatException($"{directory}: '{key}' is missing; the checkpoint is damaged.");
        var format = ReadValue<string>(reader, directory, key, "a string");
        if (format != Format) throw new CheckpointFormatException($"{directory}: '{key}' is '{format}'; this version of EmaGen reads '{Format}'.");
    }

    private static T ReadValue<T>(IDcpValues reader, string directory, string key, string expected)
    {
        if (reader.Metadata.Find(key) is not DcpBytesEntry) throw new CheckpointFormatException($"{directory}: '{key}' is missing or not a value; expected {expected}.");
        return reader.ReadValue(key) is T value ? value : throw new CheckpointFormatException($"{directory}: '{key}' is not {expected}.");
    }

    /// <summary>The tensor entries under <paramref name="prefix"/> (not the <c>_emagen.*</c> values), by name without the prefix.</summary>
    internal static List<(string Name, DcpTensorEntry Entry)> TensorEntries(IDcpValues reader, string prefix)
    {
        var list = new List<(string, DcpTensorEntry)>();
        foreach (var entry in reader.Entries)
        {
            if (entry is not DcpTensorEntry t || !entry.Key.StartsWith(prefix, StringComparison.Ordinal)) continue;
            var name = entry.Key[prefix.Length..];
            if (name.StartsWith(CheckpointKeys.Segment, StringComparison.Ordinal)) continue;
            list.Add((name, t));
        }
        return list;
    }
}

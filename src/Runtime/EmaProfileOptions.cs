using System;

namespace EmaGen;

/// <summary>
/// One named EMA profile of a multi-profile <see cref="EmaManager{TModel}"/>: its own shadows, updated with its own
/// schedule in the same pass over the parameters as the other profiles. The name becomes a key segment in checkpoints
/// (<c>ema.{Name}.fc1.weight</c>), so it is an identifier: letters, digits and underscores, not starting with a digit.
/// </summary>
/// <param name="Name">The profile's name, e.g. <c>sigma050</c>.</param>
/// <param name="Schedule">Its decay schedule, e.g. <c>EmaSchedule.PowerFunction(0.05)</c>.</param>
public sealed record EmaProfileOptions(string Name, EmaSchedule Schedule)
{
    internal void Validate()
    {
        if (string.IsNullOrEmpty(Name) || char.IsAsciiDigit(Name[0]) || !Name.AsSpan().ContainsOnlyIdentifierChars() || Name.StartsWith(CheckpointKeys.Segment.TrimEnd('.'), StringComparison.Ordinal))
        {
            throw new ArgumentException(
                $"EMA profile name '{Name}' is not usable as a checkpoint key segment: use letters, digits and underscores, not starting with a digit or '_emagen'.", nameof(Name));
        }
        ArgumentNullException.ThrowIfNull(Schedule, nameof(Schedule));
    }
}

internal static class ProfileNameText
{
    public static bool ContainsOnlyIdentifierChars(this ReadOnlySpan<char> text)
    {
        foreach (char c in text)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c == '_')) return false;
        }
        return true;
    }
}

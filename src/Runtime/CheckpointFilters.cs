using EmaGen.Dcp;

namespace EmaGen;

/// <summary>
/// The name filters a checkpoint was written with (<see cref="EmaOptions.Include"/>, <see cref="EmaOptions.Exclude"/>):
/// stored as <c>{prefix}_emagen.filters</c> by a filtered manager, absent otherwise; a strict load requires the same
/// filters, a non-strict one loads the names both sides have.
/// </summary>
internal static class CheckpointFilters
{
    /// <summary>Longest filter text a checkpoint may hold (checkpoints are untrusted input).</summary>
    private const int MaxLength = 64 << 10;

    public static string Key(string prefix) => CheckpointKeys.Of(prefix, CheckpointKeys.Filters);

    /// <summary>Throws when the checkpoint's filters under <paramref name="prefix"/> differ from <paramref name="mine"/> (null: none) and the load is strict.</summary>
    public static void Check(DcpReader reader, string directory, string prefix, string? mine, bool strict)
    {
        var key = Key(prefix);
        string? stored = null;
        if (reader.Metadata.Find(key) is not null)
        {
            if (reader.Metadata.Find(key) is not DcpBytesEntry || reader.ReadValue(key) is not string text || text.Length > MaxLength)
            {
                throw new CheckpointFormatException($"{directory}: '{key}' is not a filter description (a string of at most {MaxLength} characters).");
            }
            stored = text;
        }
        if (stored == mine || (stored is not null && mine is not null && NameFilter.Canonical(stored) == mine) || !strict) return;
        throw new System.ArgumentException(
            $"{directory}: the checkpoint was written with name filters {stored ?? "(none)"}, this manager uses {mine ?? "(none)"} (EmaOptions.Include/Exclude); load with strict: false to load the names both have.");
    }
}

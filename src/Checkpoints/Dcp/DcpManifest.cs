using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text.Json;

namespace EmaGen.Dcp;

/// <summary>Where one item of a rank's data files went: a plain value (no dtype) or a tensor chunk.</summary>
internal sealed record ManifestEntry(string Key, string? DType, long[]? GlobalSize, long[]? Offsets, long[]? Sizes, string File, long Offset, long Length);

/// <summary>
/// How a rank other than 0 tells the coordinator what it wrote: <c>.manifest-{rank}</c> in the staging folder, a small
/// JSON list of its entries bound to the save id and rank. Rank 0 keeps its own entries in memory.
/// </summary>
internal static class DcpManifest
{
    private const string Prefix = ".manifest-";
    private const string FailurePrefix = ".failed-";

    public static string PathOf(string staging, int rank) => Path.Combine(staging, Prefix + rank);

    // Written to a temporary name and renamed, so the coordinator never sees half of one.
    public static void Write(string staging, string saveId, RankInfo rank, IReadOnlyList<ManifestEntry> entries)
    {
        var path = PathOf(staging, rank.Rank);
        var temp = path + ".tmp";
        var json = new System.IO.MemoryStream();
        using (var w = new Utf8JsonWriter(json))
        {
            w.WriteStartObject();
            w.WriteString("save_id", saveId);
            w.WriteNumber("rank", rank.Rank);
            w.WriteNumber("world_size", rank.WorldSize);
            w.WriteStartArray("entries");
            foreach (var e in entries)
            {
                w.WriteStartObject();
                w.WriteString("key", e.Key);
                if (e.DType is not null)
                {
                    w.WriteString("dtype", e.DType);
                    WriteLongs(w, "global_size", e.GlobalSize!);
                    WriteLongs(w, "offsets", e.Offsets!);
                    WriteLongs(w, "sizes", e.Sizes!);
                }
                w.WriteString("file", e.File);
                w.WriteNumber("offset", e.Offset);
                w.WriteNumber("length", e.Length);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        CheckpointFiles.WriteDurably(temp, json.ToArray());
        CheckpointFiles.MoveFile(temp, path, overwrite: true);
    }

    /// <summary>
    /// Tells the other ranks of a sharded save that this one failed (<c>.failed-{rank}</c> in the staging folder, holding
    /// the error), so they stop waiting with an error naming it instead of timing out. Best effort: on a disk too full
    /// even for this, they time out.
    /// </summary>
    public static void WriteFailure(string staging, int rank, string message)
    {
        try
        {
            // The rank may have failed before the folder existed; the others look for its word there.
            CheckpointFiles.CreateDirectory(staging);
            using var stream = CheckpointFiles.Create(Path.Combine(staging, FailurePrefix + rank), 1 << 12);
            stream.Write(System.Text.Encoding.UTF8.GetBytes(message.Length > 2000 ? message[..2000] : message));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }

    /// <summary>
    /// The first word of a rank's failure in <paramref name="staging"/> left since <paramref name="since"/> (any age when
    /// <see cref="DateTime.MinValue"/>), or null.
    /// </summary>
    public static string? FirstFailure(string staging, DateTime since)
    {
        string[] failed;
        try
        {
            failed = Directory.GetFiles(staging, FailurePrefix + "*");
        }
        catch (DirectoryNotFoundException)
        {
            return null;
        }
        return failed.Order(StringComparer.Ordinal).FirstOrDefault(f => IsFailure(f, since));
    }

    /// <summary>Whether <paramref name="file"/> is a rank's word that it failed, left since <paramref name="since"/> (any age when <see cref="DateTime.MinValue"/>).</summary>
    public static bool IsFailure(string file, DateTime since) =>
        Path.GetFileName(file).StartsWith(FailurePrefix, StringComparison.Ordinal)
        // File times come from the kernel's coarse clock, a few milliseconds behind: hence the slack.
        && (since == DateTime.MinValue || File.GetLastWriteTimeUtc(file) >= since - TimeSpan.FromMilliseconds(20));

    /// <summary>Whether every rank of a world of <paramref name="worldSize"/> has left word that it failed (so none writes here any more).</summary>
    public static bool EveryRankFailed(string staging, int worldSize)
    {
        for (int r = 0; r < worldSize; r++)
        {
            if (!File.Exists(Path.Combine(staging, FailurePrefix + r))) return false;
        }
        return true;
    }

    /// <summary>
    /// Throws an <see cref="IOException"/> naming the first rank that reported a failure of this save since
    /// <paramref name="since"/> (older word belongs to an earlier attempt under the same save id).
    /// </summary>
    public static void ThrowIfAnyRankFailed(string target, string staging, string saveId, DateTime since)
    {
        if (FirstFailure(staging, since) is not { } file) return;
        string why;
        try
        {
            why = File.ReadAllText(file);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            why = "(its error could not be read)";
        }
        var rank = Path.GetFileName(file)[FailurePrefix.Length..];
        throw new IOException($"{target}: save '{saveId}' failed on rank {rank}, so nothing was committed: {why}");
    }

    public static List<ManifestEntry> Read(string staging, string saveId, int rank)
    {
        var path = PathOf(staging, rank);
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path), new JsonDocumentOptions { MaxDepth = 8 });
            var root = doc.RootElement;
            if (root.GetProperty("save_id").GetString() != saveId || root.GetProperty("rank").GetInt32() != rank)
            {
                throw new CheckpointFormatException($"{path}: manifest of another save or rank.");
            }
            var list = new List<ManifestEntry>();
            foreach (var e in root.GetProperty("entries").EnumerateArray())
            {
                bool tensor = e.TryGetProperty("dtype", out var dtype);
                list.Add(new ManifestEntry(
                    e.GetProperty("key").GetString()!,
                    tensor ? dtype.GetString() : null,
                    tensor ? Longs(e.GetProperty("global_size")) : null,
                    tensor ? Longs(e.GetProperty("offsets")) : null,
                    tensor ? Longs(e.GetProperty("sizes")) : null,
                    e.GetProperty("file").GetString()!,
                    e.GetProperty("offset").GetInt64(),
                    e.GetProperty("length").GetInt64()));
            }
            return list;
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            throw new CheckpointFormatException($"{path}: malformed manifest: {e.Message}", e);
        }
    }

    private static long[] Longs(JsonElement array) => array.EnumerateArray().Select(x => x.GetInt64()).ToArray();

    private static void WriteLongs(Utf8JsonWriter w, string name, long[] values)
    {
        w.WriteStartArray(name);
        foreach (var v in values) w.WriteNumberValue(v);
        w.WriteEndArray();
    }
}

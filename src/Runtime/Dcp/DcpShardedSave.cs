using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text.Json;
using System.Threading;
using TorchSharp;

namespace EmaGen.Dcp;

/// <summary>
/// One DCP checkpoint written by all ranks without any collective: every rank writes its data file
/// <c>__{rank}_0.distcp</c> and a small manifest into a staging folder named after the save id (so a re-used target
/// name never mixes two saves); the coordinator (rank 0) waits for every manifest (bounded), merges them into one
/// <c>.metadata</c> (chunks in rank order, global sizes, replicated tensors once), writes it last and swaps the folder
/// into place; the other ranks may wait for that commit. Only a shared file system is needed.
/// </summary>
internal static class DcpShardedSave
{
    private const string ManifestPrefix = ".manifest-";

    /// <summary>
    /// This rank's whole part of a save: <see cref="WriteRank"/>, then on rank 0 <see cref="Commit"/>, on the others
    /// <see cref="WaitForCommit"/>, each bounded by <paramref name="timeout"/>.
    /// </summary>
    public static void Save(string directory, string saveId, RankInfo rank, IReadOnlyList<DcpShard> shards,
        IReadOnlyDictionary<string, object?>? values, TimeSpan timeout)
    {
        // Each rank holds its lock on the staging folder until the commit, so no other save takes it for a crashed one.
        using var staging = EnterStaging(directory, saveId, rank, shards);
        WriteRankInto(staging.Path, saveId, rank, shards, values);
        if (rank.Rank == 0) Commit(directory, saveId, rank.WorldSize, timeout);
        else WaitForCommit(directory, saveId, timeout);
    }

    /// <summary>Writes this rank's data file and manifest. Replicated shards are written by rank 0 only.</summary>
    public static void WriteRank(string directory, string saveId, RankInfo rank, IReadOnlyList<DcpShard> shards, IReadOnlyDictionary<string, object?>? values = null)
    {
        using var staging = EnterStaging(directory, saveId, rank, shards);
        WriteRankInto(staging.Path, saveId, rank, shards, values);
    }

    // Rank 0 removes what crashed saves left behind; every rank checks the free space for its own shards.
    private static SaveStaging EnterStaging(string directory, string saveId, RankInfo rank, IReadOnlyList<DcpShard> shards)
    {
        CheckSaveId(saveId);
        return SaveStaging.Begin(Path.GetFullPath(directory).TrimEnd(Path.DirectorySeparatorChar), saveId, rank.Rank,
            shards.Where(s => rank.Rank == 0 || !s.Replicated).Select(s => (object?)s.Local), removeStale: rank.Rank == 0);
    }

    private static void WriteRankInto(string staging, string saveId, RankInfo rank, IReadOnlyList<DcpShard> shards, IReadOnlyDictionary<string, object?>? values)
    {
        var file = $"__{rank.Rank}_0.distcp";
        var entries = new List<ManifestEntry>();
        using (var stream = new FileStream(Path.Combine(staging, file), FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        {
            if (rank.Rank == 0 && values is not null)
            {
                foreach (var (key, value) in values)
                {
                    long start = stream.Position;
                    TorchSaveCodec.WriteValue(stream, value, new ItemSeal(saveId, key, null, ItemSeal.DefaultBlockSize, []));
                    entries.Add(new ManifestEntry(key, null, null, null, null, file, start, stream.Position - start));
                }
            }
            foreach (var shard in shards)
            {
                if (shard.Replicated && rank.Rank != 0) continue;
                if (shard.Offsets.Length != shard.GlobalSize.Length || shard.Local.shape.Length != shard.GlobalSize.Length)
                {
                    throw new ArgumentException($"shard '{shard.Key}': block, offsets and global size disagree in rank");
                }
                long start = stream.Position;
                TorchSaveCodec.WriteTensor(stream, shard.Local, new ItemSeal(saveId, shard.Key, shard.Offsets, ItemSeal.DefaultBlockSize, []));
                entries.Add(new ManifestEntry(shard.Key, TorchDTypes.NameOf(shard.Local.dtype), shard.GlobalSize, shard.Offsets, shard.Local.shape,
                    file, start, stream.Position - start));
            }
            stream.Flush(flushToDisk: true);
        }
        WriteManifest(Path.Combine(staging, ManifestPrefix + rank.Rank), saveId, rank, entries);
    }

    /// <summary>
    /// Rank 0: waits up to <paramref name="timeout"/> for all manifests of <paramref name="saveId"/>, merges them into
    /// <c>.metadata</c> and puts the folder in place of any previous checkpoint. A missing rank is an error naming it;
    /// then no <c>.metadata</c> is written and the previous checkpoint stays.
    /// </summary>
    public static DcpMetadata Commit(string directory, string saveId, int worldSize, TimeSpan timeout, DcpWriteOptions? options = null)
    {
        options ??= new DcpWriteOptions();
        var staging = StagingFolder(directory, saveId);
        var deadline = DateTime.UtcNow + timeout;
        var missing = Enumerable.Range(0, worldSize).ToList();
        while (true)
        {
            missing.RemoveAll(r => File.Exists(Path.Combine(staging, ManifestPrefix + r)));
            if (missing.Count == 0) break;
            if (DateTime.UtcNow >= deadline)
            {
                throw new TimeoutException(
                    $"{directory}: save '{saveId}' has no manifest from rank(s) {string.Join(", ", missing)} after {timeout.TotalSeconds:F0} s; nothing was committed.");
            }
            Thread.Sleep(20);
        }

        var metadata = new DcpMetadata
        {
            Naming = options.Naming,
            CheckpointId = Path.GetFullPath(directory),
            SaveId = saveId,
            Version = "1.0.0",
            PlannerData = new Dictionary<string, object?[]>(),
        };
        var tensors = new Dictionary<string, (DcpTensorEntry Entry, List<DcpChunk> Chunks)>(StringComparer.Ordinal);
        for (int r = 0; r < worldSize; r++)
        {
            foreach (var e in ReadManifest(Path.Combine(staging, ManifestPrefix + r), saveId, r))
            {
                var location = new DcpStorageLocation(e.File, e.Offset, e.Length, Array.Empty<string>());
                if (e.DType is null)
                {
                    metadata.Entries.Add(new DcpBytesEntry(e.Key));
                    metadata.Storage[(e.Key, null)] = location;
                    metadata.PlannerData[e.Key] = new object?[] { e.Key };
                    continue;
                }
                var chunk = new DcpChunk(e.Offsets!, e.Sizes!);
                if (!tensors.TryGetValue(e.Key, out var existing))
                {
                    var chunks = new List<DcpChunk>();
                    var entry = new DcpTensorEntry(e.Key, e.DType, e.GlobalSize!, chunks);
                    tensors[e.Key] = (entry, chunks);
                    metadata.Entries.Add(entry);
                    metadata.PlannerData[e.Key] = new object?[] { e.Key };
                    existing = (entry, chunks);
                }
                else if (existing.Entry.DType != e.DType || !existing.Entry.Size.AsSpan().SequenceEqual(e.GlobalSize))
                {
                    throw new CheckpointFormatException(
                        $"{directory}: rank {r} saves '{e.Key}' as {e.DType} ({string.Join(", ", e.GlobalSize!)}), an earlier rank as {existing.Entry.DType} ({string.Join(", ", existing.Entry.Size)}).");
                }
                if (metadata.Storage.ContainsKey((e.Key, chunk.OffsetsKey)))
                {
                    // Ranks past the end of a short dimension all hold an empty chunk at offset D: the same chunk, kept once
                    // (PyTorch's planner deduplicates equal (fqn, offsets) the same way).
                    if (chunk.Numel == 0 && existing.Chunks.Any(c => c.OffsetsKey == chunk.OffsetsKey && c.Numel == 0)) continue;
                    throw new CheckpointFormatException($"{directory}: two ranks save the chunk of '{e.Key}' at ({chunk.OffsetsKey}).");
                }
                existing.Chunks.Add(chunk);
                metadata.Storage[(e.Key, chunk.OffsetsKey)] = location;
            }
        }

        var temp = Path.Combine(staging, ".metadata.tmp");
        using (var stream = new FileStream(temp, FileMode.Create, FileAccess.Write))
        {
            stream.Write(DcpMetadataWriter.Write(metadata));
            stream.Flush(flushToDisk: true);
        }
        File.Move(temp, Path.Combine(staging, ".metadata"));
        for (int r = 0; r < worldSize; r++) File.Delete(Path.Combine(staging, ManifestPrefix + r));
        options.OnStage?.Invoke("commit");
        var old = FolderSwap.Replace(staging, Path.GetFullPath(directory));
        if (old is not null) Directory.Delete(old, recursive: true);
        return metadata;
    }

    /// <summary>Other ranks: waits until <paramref name="directory"/> holds the checkpoint of <paramref name="saveId"/>.</summary>
    public static void WaitForCommit(string directory, string saveId, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            if (File.Exists(Path.Combine(directory, ".metadata")))
            {
                try
                {
                    if (DcpReader.Open(directory).Metadata.SaveId == saveId) return;
                }
                catch (CheckpointFormatException)
                {
                    // A commit in progress on a file system without atomic exchange; look again.
                }
            }
            if (DateTime.UtcNow >= deadline) throw new TimeoutException($"{directory}: save '{saveId}' was not committed within {timeout.TotalSeconds:F0} s.");
            Thread.Sleep(20);
        }
    }

    private static string StagingFolder(string directory, string saveId)
    {
        CheckSaveId(saveId);
        return SaveStaging.PathOf(directory, saveId);
    }

    private static void CheckSaveId(string saveId)
    {
        if (saveId.Length == 0 || saveId.IndexOfAny(Path.GetInvalidFileNameChars()) >= 0 || saveId.Contains('.'))
        {
            throw new ArgumentException($"save id '{saveId}' must be a non-empty file-name fragment without dots", nameof(saveId));
        }
    }

    private sealed record ManifestEntry(string Key, string? DType, long[]? GlobalSize, long[]? Offsets, long[]? Sizes, string File, long Offset, long Length);

    // The manifest is written to a temporary name and renamed, so the coordinator never sees half of one.
    private static void WriteManifest(string path, string saveId, RankInfo rank, List<ManifestEntry> entries)
    {
        var temp = path + ".tmp";
        using (var stream = new FileStream(temp, FileMode.Create, FileAccess.Write))
        {
            using (var w = new Utf8JsonWriter(stream))
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
            stream.Flush(flushToDisk: true);
        }
        File.Move(temp, path, overwrite: true);
    }

    private static List<ManifestEntry> ReadManifest(string path, string saveId, int rank)
    {
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

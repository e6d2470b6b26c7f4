using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Threading;

namespace EmaGen.Dcp;

/// <summary>
/// The commit of every save, made by rank 0: gathers every rank's entries (its own, then the other ranks' manifests,
/// waiting for them up to the save's timeout), merges them into one <c>.metadata</c> (chunks in rank order, global
/// sizes, replicated tensors once), writes it last (through <c>.metadata.tmp</c>, flushed to disk, renamed) and swaps
/// the staging folder into place of the previous checkpoint. A missing rank is an error naming it; then no
/// <c>.metadata</c> is written and the previous checkpoint stays. The other ranks wait for the commit
/// (<see cref="WaitFor"/>). A rank that fails says so in the staging folder (<see cref="DcpManifest.WriteFailure"/>),
/// and every rank still waiting stops with an error naming it.
/// </summary>
internal static class DcpCommit
{
    /// <param name="target">The checkpoint folder, as a full path.</param>
    /// <param name="staging">The staging folder holding every rank's data files.</param>
    /// <param name="request">Rank 0's request: save id, world size, timeout, options.</param>
    /// <param name="own">Rank 0's entries.</param>
    /// <param name="freshSince">When rank 0 freshSince the save, less the timeout: only failure word left since then counts.</param>
    public static DcpMetadata Commit(string target, string staging, SaveRequest request, IReadOnlyList<ManifestEntry> own, DateTime freshSince)
    {
        var options = request.Options;
        var perRank = Gather(target, staging, request, own, freshSince);
        var metadata = Merge(target, request.SaveId, options.Naming, perRank);

        var temp = Path.Combine(staging, ".metadata.tmp");
        CheckpointFiles.WriteDurably(temp, DcpMetadataWriter.Write(metadata));
        CheckpointFiles.MoveFile(temp, Path.Combine(staging, ".metadata"));
        for (int r = 1; r < perRank.Count; r++) CheckpointFiles.DeleteFile(DcpManifest.PathOf(staging, r));
        var old = FolderSwap.Replace(staging, target);
        // Committed: the previous checkpoint's removal failing must not report the save as failed (its folder is a
        // lock-less staging folder holding a .metadata now, which the next save sweeps).
        if (old is not null) CheckpointFiles.TryDeleteDirectory(old);
        return metadata;
    }

    /// <summary>
    /// Ranks other than 0: waits until <paramref name="target"/> holds the checkpoint of <paramref name="saveId"/>, or
    /// until a rank reports in <paramref name="staging"/> that it failed.
    /// </summary>
    public static void WaitFor(string target, string staging, string saveId, TimeSpan timeout, DateTime freshSince)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            var path = Path.Combine(target, ".metadata");
            if (File.Exists(path))
            {
                try
                {
                    if (DcpMetadataReader.Read(CheckpointFiles.ReadAllBytes(path), path).SaveId == saveId) return;
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    // A commit in progress on a file system without atomic exchange, or a failed read; look again.
                }
            }
            // After the commit is seen (word left by a rank that gave up while rank 0 still committed does not count).
            DcpManifest.ThrowIfAnyRankFailed(target, staging, saveId, freshSince);
            if (DateTime.UtcNow >= deadline)
            {
                throw new TimeoutException($"{target}: save '{saveId}' was not committed by rank 0 within {timeout.TotalSeconds:F0} s.");
            }
            Thread.Sleep(20);
        }
    }

    // Every rank's entries in rank order: rank 0's own, then each other rank's manifest once all are there.
    private static List<IReadOnlyList<ManifestEntry>> Gather(string target, string staging, SaveRequest request, IReadOnlyList<ManifestEntry> own, DateTime freshSince)
    {
        int worldSize = request.Rank.WorldSize;
        var deadline = DateTime.UtcNow + request.Timeout;
        var missing = Enumerable.Range(1, worldSize - 1).ToList();
        while (true)
        {
            DcpManifest.ThrowIfAnyRankFailed(target, staging, request.SaveId, freshSince);
            missing.RemoveAll(r => File.Exists(DcpManifest.PathOf(staging, r)));
            if (missing.Count == 0) break;
            if (DateTime.UtcNow >= deadline)
            {
                throw new TimeoutException(
                    $"{target}: save '{request.SaveId}' has no manifest from rank(s) {string.Join(", ", missing)} after {request.Timeout.TotalSeconds:F0} s; nothing was committed.");
            }
            Thread.Sleep(20);
        }
        var perRank = new List<IReadOnlyList<ManifestEntry>> { own };
        for (int r = 1; r < worldSize; r++) perRank.Add(DcpManifest.Read(staging, request.SaveId, r));
        return perRank;
    }

    private static DcpMetadata Merge(string target, string saveId, DcpNaming naming, List<IReadOnlyList<ManifestEntry>> perRank)
    {
        var metadata = new DcpMetadata
        {
            Naming = naming,
            CheckpointId = target,
            SaveId = saveId,
            Version = "1.0.0",
            PlannerData = new Dictionary<string, object?[]>(),
        };
        var tensors = new Dictionary<string, (DcpTensorEntry Entry, List<DcpChunk> Chunks)>(StringComparer.Ordinal);
        for (int r = 0; r < perRank.Count; r++)
        {
            foreach (var e in perRank[r])
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
                        $"{target}: rank {r} saves '{e.Key}' as {e.DType} ({string.Join(", ", e.GlobalSize!)}), an earlier rank as {existing.Entry.DType} ({string.Join(", ", existing.Entry.Size)}).");
                }
                if (metadata.Storage.ContainsKey((e.Key, chunk.OffsetsKey)))
                {
                    // Ranks past the end of a short dimension all hold an empty chunk at offset D: the same chunk, kept once
                    // (PyTorch's planner deduplicates equal (fqn, offsets) the same way).
                    if (chunk.Numel == 0 && existing.Chunks.Any(c => c.OffsetsKey == chunk.OffsetsKey && c.Numel == 0)) continue;
                    throw new CheckpointFormatException($"{target}: two ranks save the chunk of '{e.Key}' at ({chunk.OffsetsKey}).");
                }
                existing.Chunks.Add(chunk);
                metadata.Storage[(e.Key, chunk.OffsetsKey)] = location;
            }
        }
        return metadata;
    }
}

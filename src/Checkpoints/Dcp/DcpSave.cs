using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;

namespace EmaGen.Dcp;

/// <summary>
/// The one way a DCP checkpoint is saved, by one process or by every rank of a job without any collective: each rank
/// writes its data files into a staging folder beside the target, named after the save id so a re-used target name
/// never mixes two saves (<see cref="DcpRankWriter"/>); a rank other than 0 then leaves a manifest of what it wrote and
/// waits for the commit, and rank 0 commits (<see cref="DcpCommit"/>): it merges every rank's entries into
/// <c>.metadata</c>, written last, and swaps the folder into place of the previous checkpoint. Only a shared file
/// system is needed. A save by one process is rank 0 of a world of one: nothing to wait for. A failure or crash at
/// any point leaves the previous checkpoint loadable.
/// </summary>
internal static class DcpSave
{
    /// <summary>This rank's whole part of the save; returns the committed metadata on rank 0, null on the others.</summary>
    public static DcpMetadata? Run(SaveRequest request)
    {
        Check(request);
        try
        {
            return RunChecked(request);
        }
        catch (UnauthorizedAccessException e)
        {
            // Every file-system failure of a save is an IOException, whatever the OS said.
            throw new IOException($"{request.Directory}: {e.Message}", e);
        }
    }

    private static DcpMetadata? RunChecked(SaveRequest request)
    {
        var rank = request.Rank;
        var target = Path.GetFullPath(request.Directory).TrimEnd(Path.DirectorySeparatorChar);
        // Values and replicated tensors are stored once, by rank 0.
        IReadOnlyList<SaveValue> values = rank.Rank == 0 ? request.Values : [];
        var chunks = rank.Rank == 0 ? request.Chunks : request.Chunks.Where(c => !c.Replicated).ToList();
        long dataBytes = 0;
        foreach (var chunk in chunks) dataBytes += chunk.ByteCount;

        // Every rank holds its lock on the staging folder until the commit, so no other save takes it for a crashed one;
        // rank 0 removes what crashed saves left behind.
        SaveStaging? staging = null;
        // Word that a rank failed counts for as long as the others would wait for it; older word is an earlier attempt's
        // under the same save id (rank 0 also clears such a folder when nobody holds it).
        var freshSince = DateTime.UtcNow - request.Timeout;
        try
        {
            staging = SaveStaging.Begin(target, request.SaveId, rank.Rank,
                DiskSpace.Estimate(values.Count + chunks.Count, dataBytes), removeStale: rank.Rank == 0, freshSince);
            // A rank that joins a save another rank has given up on stops at once.
            if (rank.WorldSize > 1) DcpManifest.ThrowIfAnyRankFailed(target, staging.Path, request.SaveId, freshSince);
            var entries = DcpRankWriter.Write(staging.Path, request.SaveId, rank.Rank, values, chunks, request.Options);
            if (rank.Rank == 0) return DcpCommit.Commit(target, staging.Path, request, entries, freshSince);
            DcpManifest.Write(staging.Path, request.SaveId, rank, entries);
            DcpCommit.WaitFor(target, staging.Path, request.SaveId, request.Timeout, freshSince);
            return null;
        }
        catch (Exception e)
        {
            // Nothing of a failed save outlives it: a save by one process owns its staging folder alone; in a sharded
            // save each rank leaves word that it failed (which stops the others), and whichever sees every rank's word
            // removes the folder. What cannot be removed is swept by the next save of the target.
            var folder = SaveStaging.PathOf(target, request.SaveId);
            if (rank.WorldSize > 1) DcpManifest.WriteFailure(folder, rank.Rank, e.Message);
            if (rank.WorldSize == 1 || DcpManifest.EveryRankFailed(folder, rank.WorldSize)) CheckpointFiles.TryDeleteDirectory(folder);
            throw;
        }
        finally
        {
            staging?.Dispose();
        }
    }

    // Everything that can be refused before a byte is written.
    private static void Check(SaveRequest request)
    {
        var rank = request.Rank;
        if (rank.WorldSize < 1 || rank.Rank < 0 || rank.Rank >= rank.WorldSize)
        {
            throw new ArgumentOutOfRangeException(nameof(request), $"rank {rank.Rank} of a world of {rank.WorldSize}");
        }
        if (request.Options.FilesPerRank < 1) throw new ArgumentOutOfRangeException("options", "FilesPerRank must be at least 1.");
        var id = request.SaveId;
        if (id.Length == 0 || id.IndexOfAny(Path.GetInvalidFileNameChars()) >= 0 || id.Contains('.'))
        {
            throw new ArgumentException($"save id '{id}' must be a non-empty file-name fragment without dots", "saveId");
        }
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var value in request.Values)
        {
            if (!seen.Add(value.Key)) throw new ArgumentException($"key '{value.Key}' appears twice", "state");
        }
        foreach (var chunk in request.Chunks)
        {
            if (!seen.Add(chunk.Key)) throw new ArgumentException($"key '{chunk.Key}' appears twice", "state");
            if (chunk.Offsets.Length != chunk.GlobalSize.Length || chunk.Sizes.Length != chunk.GlobalSize.Length)
            {
                throw new ArgumentException($"shard '{chunk.Key}': block, offsets and global size disagree in rank");
            }
        }
    }
}

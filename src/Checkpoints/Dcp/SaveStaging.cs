using System;
using System.IO;
using System.Linq;

namespace EmaGen.Dcp;

/// <summary>
/// The staging folder a save writes into (<c>.{name}.saving-{id}</c> beside the target) and the locks that mark it as
/// owned. Each writer holds an exclusive lock on a sibling file <c>.{name}.saving-{id}.lock-{rank}</c>, taken before
/// the folder is created and released (and the file deleted) only after the save's last step, including removing the
/// previous checkpoint that the swap left at the staging path; the kernel drops the lock when the process dies, even
/// by SIGKILL. The next save of the same target removes every staging folder whose locks are all free (a crashed
/// save) and the orphaned lock files, so crashes do not pile up copies of the checkpoint. A folder with no lock file at
/// all is removed at once when it holds a <c>.metadata</c> (the previous checkpoint, swapped out by a save whose
/// removal of it failed) or a rank's <c>.failed-{rank}</c> word, otherwise (left by an older EmaGen) once it is older
/// than <see cref="UnlockedGrace"/>. A failed save releases its lock only after removing what it staged.
/// </summary>
internal sealed class SaveStaging : IDisposable
{
    private const string SavingInfix = ".saving-";
    private const string LockInfix = ".lock-";

    /// <summary>How old a staging folder with no lock file must be before it counts as abandoned.</summary>
    internal static readonly TimeSpan UnlockedGrace = TimeSpan.FromMinutes(10);

    private readonly FileStream _lock;

    private SaveStaging(string path, FileStream held)
    {
        Path = path;
        _lock = held;
    }

    public string Path { get; }

    /// <summary>
    /// What every save does before it writes a byte: create the target's parent, remove what crashed saves of the same
    /// target left (when <paramref name="removeStale"/>; a sharded save's other ranks leave that to rank 0), check that
    /// <paramref name="neededBytes"/> fit in the free space, and enter the staging folder of save <paramref name="id"/>.
    /// <paramref name="target"/> is the checkpoint folder as a full path; failure word (<c>.failed-{rank}</c>) written
    /// since <paramref name="freshSince"/> belongs to this attempt.
    /// </summary>
    public static SaveStaging Begin(string target, string id, int rank, long neededBytes, bool removeStale, DateTime freshSince)
    {
        var parent = System.IO.Path.GetDirectoryName(target) ?? throw new ArgumentException($"'{target}' has no parent folder", "directory");
        CheckpointFiles.CreateDirectory(parent);
        if (removeStale)
        {
            RemoveStale(target, keepId: id);
            // An earlier attempt under the same save id that nobody holds any more: its manifests and failure word are
            // not this attempt's. (Fresh failure word is: a rank of this attempt failed before it took its lock.)
            var own = PathOf(target, id);
            if (Directory.Exists(own) && !AnyHeld(LocksOf(own)) && DcpManifest.FirstFailure(own, freshSince) is null)
            {
                ClearEarlierAttempt(own, freshSince);
            }
        }
        DiskSpace.Require(parent, neededBytes, target);
        return Enter(target, id, rank);
    }

    /// <summary>Locks, then creates (or joins, for the other ranks of a sharded save) the staging folder of save <paramref name="id"/>.</summary>
    public static SaveStaging Enter(string target, string id, int rank)
    {
        var path = PathOf(target, id);
        CheckpointFiles.Before(FileOp.CreateFile, path + LockInfix + rank);
        var held = new FileStream(path + LockInfix + rank, FileMode.Create, FileAccess.Write, FileShare.None, 1, FileOptions.DeleteOnClose);
        try
        {
            CheckpointFiles.CreateDirectory(path);
        }
        catch
        {
            held.Dispose();
            throw;
        }
        return new SaveStaging(path, held);
    }

    // Emptied, not removed, and this attempt's failure word kept: a rank that failed before it took its lock creates the
    // folder and then leaves its word in it, so the folder can be unlocked and without word when checked above, and the
    // word can land before the removal. Removing the folder lost that word: rank 0 then waited out the timeout for the
    // rank, and, its own word alone there, nobody removed the folder once both had returned. A leftover that cannot be
    // removed fails this save with an IOException naming it: merging an earlier attempt's manifest would be worse.
    private static void ClearEarlierAttempt(string folder, DateTime freshSince)
    {
        foreach (var entry in Directory.GetFileSystemEntries(folder))
        {
            if (DcpManifest.IsFailure(entry, freshSince)) continue;
            if (Directory.Exists(entry)) CheckpointFiles.DeleteDirectory(entry);
            else CheckpointFiles.DeleteFile(entry);
        }
    }

    public static string PathOf(string target, string id)
    {
        var full = System.IO.Path.GetFullPath(target).TrimEnd(System.IO.Path.DirectorySeparatorChar);
        return System.IO.Path.Combine(System.IO.Path.GetDirectoryName(full)!, "." + System.IO.Path.GetFileName(full) + SavingInfix + id);
    }

    /// <summary>Releases the lock and deletes its file: call once the staging path is gone (committed, or cleaned up).</summary>
    public void Dispose() => _lock.Dispose();

    /// <summary>Removes the staging folders (and lock files) of <paramref name="target"/> that no live writer owns; returns how many folders.</summary>
    public static int RemoveStale(string target, string? keepId = null)
    {
        var full = System.IO.Path.GetFullPath(target).TrimEnd(System.IO.Path.DirectorySeparatorChar);
        var parent = System.IO.Path.GetDirectoryName(full)!;
        if (!Directory.Exists(parent)) return 0;
        var prefix = "." + System.IO.Path.GetFileName(full) + SavingInfix;
        var keep = keepId is null ? null : PathOf(target, keepId);
        int removed = 0;
        foreach (var folder in Directory.GetDirectories(parent, prefix + "*"))
        {
            if (folder == keep) continue;
            try
            {
                var locks = LocksOf(folder);
                // A lock-less folder holding a .metadata is a checkpoint swapped out by a committed save whose removal of
                // it failed: nobody writes there any more.
                // So is one holding a rank's word that the save failed.
                bool abandoned = locks.Length == 0
                    ? File.Exists(System.IO.Path.Combine(folder, ".metadata")) || DcpManifest.FirstFailure(folder, DateTime.MinValue) is not null
                      || DateTime.UtcNow - Directory.GetLastWriteTimeUtc(folder) > UnlockedGrace
                    : !AnyHeld(locks);
                if (!abandoned) continue;
                CheckpointFiles.DeleteDirectory(folder);
                foreach (var file in locks) CheckpointFiles.DeleteFile(file);
                removed++;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // Another process removed or took it meanwhile: not ours to fight over.
            }
        }
        // Lock files whose folder is gone (a writer killed between removing its folder and its lock).
        foreach (var file in Directory.GetFiles(parent, prefix + "*" + LockInfix + "*"))
        {
            var folder = file[..file.LastIndexOf(LockInfix, StringComparison.Ordinal)];
            if (folder == keep || Directory.Exists(folder)) continue;
            try
            {
                if (!AnyHeld(new[] { file })) CheckpointFiles.DeleteFile(file);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
            }
        }
        return removed;
    }

    // The lock files of the writers of staging folder `folder` (beside it).
    private static string[] LocksOf(string folder) =>
        Directory.GetFiles(System.IO.Path.GetDirectoryName(folder)!, System.IO.Path.GetFileName(folder) + LockInfix + "*");

    private static bool AnyHeld(string[] locks)
    {
        foreach (var file in locks)
        {
            try
            {
                using var probe = new FileStream(file, FileMode.Open, FileAccess.Write, FileShare.None);
            }
            catch (FileNotFoundException)
            {
            }
            catch (IOException)
            {
                return true;
            }
        }
        return false;
    }
}

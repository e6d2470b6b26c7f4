using System;
using System.IO;

namespace EmaGen.Dcp;

/// <summary>
/// The staging folder a save writes into (<c>.{name}.saving-{id}</c> beside the target) and the lock that marks it as
/// owned. Each writer holds an exclusive lock on a <c>.lock-{rank}</c> file inside it for the whole save; the kernel
/// drops the lock when the process dies, even by SIGKILL. The next save of the same target removes every staging
/// folder whose locks are all free (a crashed save), so crashes do not pile up copies of the checkpoint. A folder
/// without any lock file is removed only once it is older than <see cref="UnlockedGrace"/> (a writer that died between
/// creating the folder and its lock file, or a save by an older EmaGen).
/// </summary>
internal sealed class SaveStaging : IDisposable
{
    private const string SavingInfix = ".saving-";
    private const string LockPrefix = ".lock-";

    /// <summary>How old a staging folder with no lock file must be before it counts as abandoned.</summary>
    internal static readonly TimeSpan UnlockedGrace = TimeSpan.FromMinutes(10);

    private readonly FileStream _lock;

    private SaveStaging(string path, FileStream held)
    {
        Path = path;
        _lock = held;
    }

    public string Path { get; }

    /// <summary>Creates (or joins, for the other ranks of a sharded save) the staging folder of save <paramref name="id"/> and locks it for <paramref name="rank"/>.</summary>
    public static SaveStaging Enter(string target, string id, int rank)
    {
        var path = PathOf(target, id);
        Directory.CreateDirectory(path);
        var held = new FileStream(System.IO.Path.Combine(path, LockPrefix + rank), FileMode.Create, FileAccess.Write, FileShare.None);
        return new SaveStaging(path, held);
    }

    public static string PathOf(string target, string id)
    {
        var full = System.IO.Path.GetFullPath(target).TrimEnd(System.IO.Path.DirectorySeparatorChar);
        return System.IO.Path.Combine(System.IO.Path.GetDirectoryName(full)!, "." + System.IO.Path.GetFileName(full) + SavingInfix + id);
    }

    /// <summary>Deletes the lock files, so they do not travel into the committed checkpoint (the locks stay held until disposal).</summary>
    public void RemoveLockFiles()
    {
        foreach (var file in Directory.GetFiles(Path, LockPrefix + "*")) File.Delete(file);
    }

    public void Dispose() => _lock.Dispose();

    /// <summary>Removes the staging folders of <paramref name="target"/> that no live writer owns; returns how many.</summary>
    public static int RemoveStale(string target, string? keepId = null)
    {
        var full = System.IO.Path.GetFullPath(target).TrimEnd(System.IO.Path.DirectorySeparatorChar);
        var parent = System.IO.Path.GetDirectoryName(full)!;
        var pattern = "." + System.IO.Path.GetFileName(full) + SavingInfix + "*";
        if (!Directory.Exists(parent)) return 0;
        int removed = 0;
        foreach (var folder in Directory.GetDirectories(parent, pattern))
        {
            if (keepId is not null && folder == PathOf(target, keepId)) continue;
            try
            {
                if (!Abandoned(folder)) continue;
                Directory.Delete(folder, recursive: true);
                removed++;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // Another process removed or locked it meanwhile: it is not ours to fight over.
            }
        }
        return removed;
    }

    private static bool Abandoned(string folder)
    {
        var locks = Directory.GetFiles(folder, LockPrefix + "*");
        if (locks.Length == 0) return DateTime.UtcNow - Directory.GetLastWriteTimeUtc(folder) > UnlockedGrace;
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
                return false; // held: a live save
            }
        }
        return true;
    }
}

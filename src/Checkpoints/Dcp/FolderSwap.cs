using System;
using System.IO;
using System.Runtime.InteropServices;

namespace EmaGen.Dcp;

/// <summary>
/// Puts a completed checkpoint folder in place of the previous one. On Linux the two directories are exchanged in one
/// atomic <c>renameat2(RENAME_EXCHANGE)</c>, so at every instant the target path holds a complete checkpoint; elsewhere
/// (or on file systems without the flag) the old folder is renamed aside first, leaving a short window in which only
/// the aside copy exists.
/// </summary>
internal static partial class FolderSwap
{
    private const int AtFdCwd = -100;
    private const uint RenameExchange = 2;

    [LibraryImport("libc", EntryPoint = "renameat2", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int RenameAt2(int olddirfd, string oldpath, int newdirfd, string newpath, uint flags);

    /// <summary>Moves <paramref name="staged"/> to <paramref name="target"/>; returns the path now holding the old folder (to delete), or null.</summary>
    public static string? Replace(string staged, string target)
    {
        if (!Directory.Exists(target))
        {
            CheckpointFiles.MoveDirectory(staged, target);
            return null;
        }
        CheckpointFiles.Before(FileOp.Rename, target);
        if (OperatingSystem.IsLinux() && TryExchange(staged, target)) return staged;
        // Named like a staging folder: should its removal fail, the next save's sweep finds it (lock-less, with .metadata).
        var aside = SaveStaging.PathOf(target, "replaced" + Guid.NewGuid().ToString("N")[..8]);
        CheckpointFiles.MoveDirectory(target, aside);
        try
        {
            CheckpointFiles.MoveDirectory(staged, target);
        }
        catch
        {
            // Put the previous checkpoint back, so the target path does not stay empty after a failed save; should that
            // fail too, the first error is the one reported (the previous checkpoint is then at the aside path).
            try
            {
                Directory.Move(aside, target);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
            }
            throw;
        }
        return aside;
    }

    private static bool TryExchange(string a, string b)
    {
        try
        {
            return RenameAt2(AtFdCwd, a, AtFdCwd, b, RenameExchange) == 0;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return false;
        }
    }
}

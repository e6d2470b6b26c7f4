using System;
using System.IO;

namespace EmaGen.Dcp;

/// <summary>
/// The free-space check a save makes before writing: the new checkpoint is written beside the previous one (which stays
/// until the new one is complete), so the file system needs room for a whole new copy. Failing early, with the number,
/// beats failing at 90% with ENOSPC after minutes of writing.
/// </summary>
internal static class DiskSpace
{
    /// <summary>Bytes of framing per item (ZIP headers, pickle, seal, 64-byte alignment); generous on purpose.</summary>
    internal const long ItemOverhead = 4096;

    /// <summary>Free bytes for the caller on the file system holding a path. Replaced by tests to simulate a full disk.</summary>
    internal static Func<string, long> Available = path => new DriveInfo(path).AvailableFreeSpace;

    /// <summary>An upper estimate of the bytes a save of <paramref name="items"/> items holding <paramref name="dataBytes"/> bytes of tensor data writes.</summary>
    public static long Estimate(int items, long dataBytes) => (1 << 16) + items * ItemOverhead + dataBytes; // .metadata and slack, then framing and data

    /// <summary>Throws an <see cref="IOException"/> naming both figures when <paramref name="folder"/>'s file system has less than <paramref name="needed"/> bytes free.</summary>
    public static void Require(string folder, long needed, string target)
    {
        long free;
        try
        {
            free = Available(folder);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            return; // no figure to compare with: let the write itself report
        }
        if (free < needed)
        {
            throw new IOException(
                $"{target}: the save needs about {needed:N0} bytes but the file system holding '{folder}' has {free:N0} free; nothing was written and the previous checkpoint is intact.");
        }
    }
}

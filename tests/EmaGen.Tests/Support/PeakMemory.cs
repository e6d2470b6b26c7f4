using System;
using System.IO;

namespace EmaGen.Tests.Support;

/// <summary>
/// The process's peak resident memory (VmHWM), which Linux lets a process reset by writing 5 to
/// <c>/proc/self/clear_refs</c>: reset, run, read gives the peak of what ran in between.
/// </summary>
internal static class PeakMemory
{
    public static void Reset() => File.WriteAllText("/proc/self/clear_refs", "5");

    public static long PeakBytes()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith("VmHWM:", StringComparison.Ordinal)) return long.Parse(line[6..].Trim().Split(' ')[0]) * 1024;
        }
        throw new InvalidOperationException("/proc/self/status has no VmHWM line");
    }

    public static long CurrentBytes()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal)) return long.Parse(line[6..].Trim().Split(' ')[0]) * 1024;
        }
        throw new InvalidOperationException("/proc/self/status has no VmRSS line");
    }
}

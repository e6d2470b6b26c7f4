using System;

namespace EmaGen.Tests.Support;

/// <summary>Managed bytes a steady-state step allocates on the calling thread: warmed up first, then measured.</summary>
internal static class Allocations
{
    public static long OfSteadyState(Action step, int warmup, int measured)
    {
        for (int i = 0; i < warmup; i++) step();
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < measured; i++) step();
        return GC.GetAllocatedBytesForCurrentThread() - before;
    }
}

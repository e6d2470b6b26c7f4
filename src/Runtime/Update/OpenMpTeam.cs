using System;
using System.IO;
using System.Runtime.InteropServices;

namespace EmaGen;

/// <summary>
/// LibTorch's own intra-op threads, borrowed for the CPU update. LibTorch on Linux runs its CPU ops on a GNU OpenMP
/// team; when an op ends (the optimizer's last one, right before a trainer's update) the team's workers busy-wait for a
/// while before they sleep, each holding a core. Helper threads of our own would then share those cores with spinning
/// workers; a parallel region on the same team hands the update to the workers that are spinning for work, so the
/// update uses the cores instead of fighting for them. The region is opened through libgomp's own entry point
/// (<c>GOMP_parallel</c>, the call a compiler emits for <c>#pragma omp parallel</c>) in the copy of libgomp LibTorch
/// loaded: no setting of LibTorch's is changed, and the team's size is the update's, given per region.
/// <para>
/// Found once per process: the libgomp mapped next to LibTorch's CPU library. Absent (another platform, a LibTorch
/// built without OpenMP or with Intel's runtime), the update keeps its own helper threads.
/// </para>
/// <para>
/// libgomp keeps one team per thread that opens a region. The team that spins after the optimizer's step is the team of
/// the thread that ran it, so the update gains only when called on that thread; a caller on changing threads gets a team
/// per thread, as LibTorch's own ops on those threads do (docs/performance.md).
/// </para>
/// </summary>
internal static unsafe class OpenMpTeam
{
    private static readonly delegate* unmanaged<delegate* unmanaged<void*, void>, void*, uint, uint, void> s_parallel;
    private static readonly delegate* unmanaged<int> s_threadNumber;

    static OpenMpTeam()
    {
        if (!OperatingSystem.IsLinux() || FindLibGomp() is not { } path) return;
        if (!NativeLibrary.TryLoad(path, out var library)) return;
        if (!NativeLibrary.TryGetExport(library, "GOMP_parallel", out var parallel)) return;
        if (!NativeLibrary.TryGetExport(library, "omp_get_thread_num", out var threadNumber)) return;
        s_parallel = (delegate* unmanaged<delegate* unmanaged<void*, void>, void*, uint, uint, void>)parallel;
        s_threadNumber = (delegate* unmanaged<int>)threadNumber;
    }

    /// <summary>Whether LibTorch's OpenMP team can run the update in this process.</summary>
    public static bool Available => s_parallel != null;

    /// <summary>
    /// Runs <paramref name="body"/> on <paramref name="threads"/> threads of the calling thread's OpenMP team (the caller
    /// is thread 0) and returns when all have returned. <paramref name="state"/> is handed to each.
    /// </summary>
    public static void Run(delegate* unmanaged<void*, void> body, void* state, int threads) =>
        s_parallel(body, state, (uint)threads, 0);

    /// <summary>The calling thread's number in the running region: 0 for the thread that opened it.</summary>
    public static int ThreadNumber => s_threadNumber();

    // The libgomp LibTorch's CPU library was linked against: the one mapped from the same folder (LibTorch wheels and
    // packages ship their own under a hashed name); only if there is none there, any libgomp mapped in the process.
    private static string? FindLibGomp()
    {
        string? torchFolder = null;
        var libgomps = new System.Collections.Generic.List<string>();
        try
        {
            foreach (var line in File.ReadLines("/proc/self/maps"))
            {
                int slash = line.IndexOf('/');
                if (slash < 0) continue;
                string path = line[slash..];
                string name = Path.GetFileName(path);
                if (name.StartsWith("libtorch_cpu.", StringComparison.Ordinal)) torchFolder = Path.GetDirectoryName(path);
                else if (name.StartsWith("libgomp", StringComparison.Ordinal) && name.Contains(".so", StringComparison.Ordinal) && !libgomps.Contains(path)) libgomps.Add(path);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
        if (torchFolder is null || libgomps.Count == 0) return null;
        return libgomps.Find(path => Path.GetDirectoryName(path) == torchFolder) ?? libgomps[0];
    }
}

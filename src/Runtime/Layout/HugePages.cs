using System;
using System.IO;
using System.Runtime.InteropServices;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// The manager's flat CPU buffers (shadows, packed parameters, BEMA anchors) on transparent huge pages where Linux
/// offers them. Every update streams these buffers whole; on 4 KiB pages the stream takes a TLB miss every 4 KiB per
/// buffer, and the hardware prefetchers stop at each page boundary, so a pass over ordinary memory is measurably
/// slower than the same pass over huge pages (docs/performance.md, "Huge pages"). Packed parameters are the model's
/// own memory from then on, so the trainer's forward, backward and optimizer step read them through huge pages too.
/// <para>
/// Only the buffer's own whole huge pages are advised (the aligned interior), so no neighbouring allocation changes;
/// the advice is <c>MADV_HUGEPAGE</c> before the buffer is first written (pages then fault in huge, no copy) and
/// <c>MADV_COLLAPSE</c> after (for pages the allocator had already touched). The system's choice stands: with
/// <c>transparent_hugepage</c> set to <c>never</c> nothing is asked, and a refused advice (no huge page free, a kernel
/// before 6.1 for the collapse, another OS) leaves the buffer on ordinary pages, which only costs speed. Nothing here
/// changes the buffer's size or contents, and no setting of the process or of LibTorch.
/// </para>
/// </summary>
internal static partial class HugePages
{
    private const int AdviseHugePage = 14;
    private const int AdviseCollapse = 25;

    /// <summary>Benchmark-only: buffers made from now on are plain <c>torch.zeros</c> (the before/after figure).</summary>
    internal static bool OffForBenchmark { get; set; }

    /// <summary>The size of a transparent huge page on this system, zero where none can be asked for.</summary>
    public static long Size { get; } = ReadSize();

    /// <summary>A zeroed flat buffer; on the CPU, its whole huge pages advised as the class describes.</summary>
    public static torch.Tensor Zeros(long elements, torch.ScalarType dtype, torch.Device device)
    {
        if (device.type != DeviceType.CPU || Size == 0 || OffForBenchmark) return torch.zeros(elements, dtype, device);
        var buffer = torch.empty(elements, dtype, device);
        var (from, length) = Interior(NativeTensor.DataPointer(buffer), elements * buffer.ElementSize);
        if (length != 0) TryAdvise(from, length, AdviseHugePage);
        InPlace.Release(buffer.zero_(), buffer);
        if (length != 0) TryAdvise(from, length, AdviseCollapse);
        return buffer;
    }

    // The advice is a hint: its result is deliberately not read (a refusal leaves ordinary pages, see above), and a
    // C library without madvise is one that cannot be asked.
    private static void TryAdvise(nint from, nuint length, int advice)
    {
        try
        {
            Advise(from, length, advice);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
        }
    }

    /// <summary>The whole huge pages inside <c>[start, start + bytes)</c>: their first address and length (zero when none).</summary>
    internal static (nint From, nuint Length) Interior(nint start, long bytes)
    {
        if (Size == 0) return (0, 0);
        long from = ((long)start + Size - 1) / Size * Size;
        long to = ((long)start + bytes) / Size * Size;
        return to > from ? ((nint)from, (nuint)(to - from)) : (0, 0);
    }

    private static long ReadSize()
    {
        if (!OperatingSystem.IsLinux()) return 0;
        try
        {
            const string folder = "/sys/kernel/mm/transparent_hugepage/";
            if (File.ReadAllText(folder + "enabled").Contains("[never]", StringComparison.Ordinal)) return 0;
            return long.TryParse(File.ReadAllText(folder + "hpage_pmd_size").Trim(), System.Globalization.NumberStyles.None,
                System.Globalization.CultureInfo.InvariantCulture, out long size) && size > 0 && (size & (size - 1)) == 0 ? size : 0;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return 0;
        }
    }

    [LibraryImport("libc", EntryPoint = "madvise")]
    private static partial int Advise(nint address, nuint length, int advice);
}

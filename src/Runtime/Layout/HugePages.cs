using System;
using System.IO;
using System.Runtime.InteropServices;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// The manager's flat CPU buffers (shadows, packed parameters, BEMA anchors) on transparent huge pages where Linux
/// offers them. Every update streams these buffers whole; on 4 KiB pages the stream takes a TLB miss every 4 KiB per
/// buffer and the hardware prefetchers restart at each page. Where a step is short this costs the update measurably,
/// elsewhere nothing measurable (docs/performance.md, "Huge pages"). Packed parameters are the model's own memory from
/// then on, so the trainer's forward, backward and optimizer step read them through huge pages too.
/// <para>
/// Only the buffer's own whole huge pages are advised (the aligned interior): <c>MADV_HUGEPAGE</c> before the buffer is
/// first written (fresh pages then fault in huge, no copy) and <c>MADV_COLLAPSE</c> after (for pages the allocator had
/// already touched). The system's choice stands: with <c>transparent_hugepage</c> set to <c>never</c> nothing is asked,
/// and where no huge page can be had (none free at fault time, a kernel before 6.1 for the collapse, another OS) the
/// buffer stays on ordinary pages, which only costs speed. With <c>defrag</c> left at the kernel's default the kernel
/// may compact memory for these faults, so building a manager can take longer on a host whose memory is fragmented.
/// </para>
/// <para>
/// What outlives the buffer: the advice is a property of the address range, not of the buffer. A buffer under 32 MiB
/// may come from the C allocator's heap; once freed, that range can be reused for other allocations and keeps the
/// advice, so the kernel may back it with huge pages as it would under <c>transparent_hugepage=always</c> (at most the
/// freed buffer's size in resident memory). Nothing changes the buffer's size or contents, and no setting of
/// LibTorch's.
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

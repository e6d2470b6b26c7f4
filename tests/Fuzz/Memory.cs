using System;
using System.IO;
using TorchSharp;

namespace EmaGen.Fuzz;

/// <summary>
/// Peak resident memory of this process, resettable (Linux: <c>/proc/self/clear_refs</c>), for figures that bound what
/// EmaGen's code adds. An untouched allocation is not a free input: on some kernels reading an untouched anonymous page
/// maps the shared zero page (no growth), on others (the machines this project runs on) it makes the page resident, and
/// transparent huge pages round a touch up to 2 MiB. So a measurement makes its inputs resident first
/// (<see cref="MakeResident"/>), then takes the baseline, and no verdict depends on the kernel's memory settings
/// (docs/checkpoint-trust.md, "Measuring memory").
/// </summary>
public static class Memory
{
    /// <summary>Resets the peak to the current resident size and returns that size.</summary>
    public static long ResetPeak()
    {
        File.WriteAllText("/proc/self/clear_refs", "5");
        return Read("VmRSS:");
    }

    /// <summary>The peak resident size since the last <see cref="ResetPeak"/>.</summary>
    public static long Peak() => Read("VmHWM:");

    /// <summary>
    /// The peak resident growth while <paramref name="action"/> runs, over the size just before it (after a collection),
    /// and how the resident size had grown by its end in anonymous and file-backed pages (code, mapped files), for a
    /// failure message.
    /// </summary>
    public static long PeakGrowth(Action action, out string residentGrowth)
    {
        GC.Collect();
        var (anon, file) = Resident();
        long baseline = ResetPeak();
        action();
        long peak = Peak() - baseline;
        var (anonAfter, fileAfter) = Resident();
        residentGrowth = $"resident at the end: anonymous {(anonAfter - anon) >> 20:+#;-#;0} MiB, file-backed {(fileAfter - file) >> 20:+#;-#;0} MiB";
        return peak;
    }

    /// <inheritdoc cref="PeakGrowth(Action, out string)"/>
    public static long PeakGrowth(Action action) => PeakGrowth(action, out _);

    private static (long Anon, long File) Resident() => (Read("RssAnon:"), Read("RssFile:"));

    /// <summary>Writes every page of a CPU tensor's storage (with <paramref name="value"/>), so reading it later adds nothing.</summary>
    public static void MakeResident(torch.Tensor tensor, double value = 0)
    {
        if (tensor.device_type != DeviceType.CPU) throw new ArgumentException($"MakeResident needs a CPU tensor, got {tensor.device}.", nameof(tensor));
        tensor.fill_(value);
    }

    private static long Read(string field)
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith(field, StringComparison.Ordinal)) return long.Parse(line[field.Length..].Trim().Split(' ')[0]) * 1024;
        }
        return 0;
    }
}

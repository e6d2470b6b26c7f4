using System;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using EmaGen.Export;

namespace EmaGen.Cli;

/// <summary>
/// <c>emagen export SRC OUT</c>: the EMA weights as Hugging Face style safetensors (one <c>model.safetensors</c>, or
/// numbered shards and <c>model.safetensors.index.json</c> with <c>--max-shard-size</c>), cast and renamed as asked.
/// </summary>
internal static class ExportCommand
{
    public static int Run(string source, string output, string? profile, string? dtype, string? strip, string? add, string? maxShardSize,
        TextWriter stdout, TextWriter stderr)
    {
        var options = new ExportOptions(profile, ParseDType(dtype), strip, add, maxShardSize is null ? 0 : ParseSize(maxShardSize));
        var clock = Stopwatch.StartNew();
        var last = TimeSpan.Zero;
        var result = SafetensorsExport.Run(source, output, options, (done, total, bytes, allBytes) =>
        {
            // A progress line on stderr every second or so of a long export; stdout keeps the summary only.
            if (clock.Elapsed - last < TimeSpan.FromSeconds(1) && done < total) return;
            last = clock.Elapsed;
            stderr.WriteLine($"export: {done}/{total} tensors, {bytes / 1e6:F0} of {allBytes / 1e6:F0} MB");
        });
        stdout.WriteLine($"wrote {result.Files.Count} file(s) to {output}: {result.Tensors} tensors, {result.TotalBytes:N0} bytes");
        foreach (var file in result.Files) stdout.WriteLine("  " + Path.GetFileName(file));
        return 0;
    }

    private static CheckpointDType? ParseDType(string? text)
    {
        if (text is null) return null;
        var name = text.ToLowerInvariant() switch
        {
            "bf16" or "bfloat16" => "bfloat16",
            "fp16" or "float16" or "half" => "float16",
            "fp32" or "float32" or "float" => "float32",
            _ => throw new ArgumentException($"--dtype '{text}' is not one of bf16, fp16, fp32."),
        };
        CheckpointDTypes.TryGetByTorchName(name, out var dtype);
        return dtype;
    }

    /// <summary><c>5GB</c>, <c>500MB</c>, <c>2GiB</c>, <c>1000000</c>: decimal units as Hugging Face reads them, binary with <c>i</c>.</summary>
    internal static long ParseSize(string text)
    {
        var t = text.Trim().ToUpperInvariant();
        (string Suffix, long Factor)[] units = [("KIB", 1L << 10), ("MIB", 1L << 20), ("GIB", 1L << 30), ("KB", 1000), ("MB", 1000_000), ("GB", 1000_000_000), ("B", 1)];
        long factor = 1;
        foreach (var (suffix, f) in units)
        {
            if (!t.EndsWith(suffix, StringComparison.Ordinal)) continue;
            t = t[..^suffix.Length].Trim();
            factor = f;
            break;
        }
        if (!double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out var value) || !(value > 0) || value * factor > long.MaxValue)
        {
            throw new ArgumentException($"--max-shard-size '{text}' is not a size such as 5GB, 500MB or 2GiB.");
        }
        return (long)(value * factor);
    }
}

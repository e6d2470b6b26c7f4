using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Linq;
using EmaGen.Dcp;

namespace EmaGen.Benchmarks;

/// <summary>
/// Peak resident memory of the emagen tool's <c>export</c> and <c>posthoc</c> on a large checkpoint (default 2 GB of
/// 64 MB fp32 tensors, and two fp32 post-hoc snapshots of that size), each measured as its own process with
/// <c>/usr/bin/time</c> (maximum RSS). The inputs are written here with the format library, one tensor at a time.
/// </summary>
/// <remarks>dotnet run -c Release --project tests/Benchmarks -- tool-memory [--gb 2] [--tensor-mb 64] [--dir PATH] [--cli EmaGen.Cli.dll]</remarks>
internal static class ToolMemoryBenchmark
{
    public static int Run(string[] args)
    {
        double gb = 2;
        int tensorMb = 64;
        string? dir = null, cli = null;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--gb": gb = double.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--tensor-mb": tensorMb = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--dir": dir = args[++i]; break;
                case "--cli": cli = args[++i]; break;
                default: throw new ArgumentException($"unknown option {args[i]}");
            }
        }
        cli ??= Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", "..", "..", "src", "Cli", "bin", "Release", "net10.0", "EmaGen.Cli.dll"));
        if (!File.Exists(cli)) throw new FileNotFoundException($"build the tool first (dotnet build -c Release src/Cli): {cli}");
        var root = dir ?? Path.Combine(Path.GetTempPath(), "emagen-tool-memory-" + Environment.ProcessId);
        int count = (int)Math.Round(gb * 1024 / tensorMb);
        long elements = (long)tensorMb << 18;   // fp32: 4 bytes each
        CheckpointDTypes.TryGetByTorchName("float32", out var f32);
        try
        {
            var clock = Stopwatch.StartNew();
            var names = Enumerable.Range(0, count).Select(i => $"blocks.{i}.weight").ToList();
            var ckpt = Path.Combine(root, "ckpt");
            PlainSave.OneRank(ckpt, EmaCheckpoint.ProfileState("ema.", new EmaCheckpoint.StoredState(100, 0.999, 0.999, "Constant(decay=0.999)")),
                names.Select((n, i) => PlainSave.Whole("ema." + n, f32, [elements], () => Fill(f32, elements, i))));
            var snapshots = Path.Combine(root, "snapshots");
            foreach (var (step, gamma) in new[] { (50L, 6.94), (100L, 6.94) })
            {
                var values = new List<KeyValuePair<string, object?>>
                {
                    new(CheckpointKeys.Of("", CheckpointKeys.Format), PostHocSnapshot.Format),
                    new(CheckpointKeys.Of("", CheckpointKeys.Step), step),
                    new(CheckpointKeys.Of("", CheckpointKeys.Profiles), "p"),
                    new(CheckpointKeys.Of("p.", CheckpointKeys.Gamma), gamma + step / 100.0),
                };
                PlainSave.OneRank(Path.Combine(snapshots, $"step-{step:D10}"), values,
                    names.Select((n, i) => PlainSave.Whole("p." + n, f32, [elements], () => Fill(f32, elements, i + (int)step))));
            }
            Console.WriteLine($"inputs: {count} tensors of {tensorMb} MB ({count * (long)tensorMb} MB) in {root}, written in {clock.Elapsed.TotalSeconds:F0} s");

            // Alternating rounds, so a noisy neighbour on this machine does not favour one command.
            for (int round = 0; round < 2; round++)
            {
                Measure("export --dtype bf16", cli, "export", ckpt, Path.Combine(root, "hf"), "--dtype", "bf16", "--max-shard-size", "1GB");
                Measure("posthoc --sigma-rel 0.1", cli, "posthoc", snapshots, "--sigma-rel", "0.1", "--step", "100", "--out", Path.Combine(root, "synth"));
            }
            return 0;
        }
        finally
        {
            if (dir is null && Directory.Exists(root)) Directory.Delete(root, recursive: true);
        }
    }

    // Deterministic values that differ per tensor, filled in place.
    private static unsafe HostTensor Fill(CheckpointDType dtype, long elements, int seed)
    {
        var t = HostTensor.Allocate(dtype, [elements]);
        var span = t.Span<float>();
        uint state = (uint)seed * 2654435761u + 1;
        for (int i = 0; i < span.Length; i++)
        {
            state = state * 1664525u + 1013904223u;
            span[i] = (state >> 8) * (1f / (1 << 24)) - 0.5f;
        }
        return t;
    }

    private static void Measure(string name, string cli, params string[] args)
    {
        var start = new ProcessStartInfo("/usr/bin/time") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in new[] { "-f", "maxrss_kb=%M", "dotnet", cli }.Concat(args)) start.ArgumentList.Add(a);
        var clock = Stopwatch.StartNew();
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0) throw new InvalidOperationException($"{name} failed: {stdout.Result}{stderr}");
        var line = stderr.Split('\n').Last(l => l.StartsWith("maxrss_kb=", StringComparison.Ordinal));
        long kb = long.Parse(line["maxrss_kb=".Length..], CultureInfo.InvariantCulture);
        Console.WriteLine($"emagen {name}: peak RSS {kb / 1024.0:F0} MB, {clock.Elapsed.TotalSeconds:F1} s");
    }
}

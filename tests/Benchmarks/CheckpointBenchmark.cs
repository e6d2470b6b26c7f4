using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Text.Json;
using EmaGen.Dcp;
using TorchSharp;

namespace EmaGen.Benchmarks;

/// <summary>
/// Save and load throughput of a DCP checkpoint against <c>cp</c> of the same bytes on the same disk (plus <c>sync</c>
/// of the copy, since a save flushes its files to disk). Prints one JSON object; ratios are cp time / EmaGen time,
/// paired per round.
/// </summary>
internal static class CheckpointBenchmark
{
    public static int Run(string[] args)
    {
        long bytes = 1_000_000_000;
        string root = Path.Combine(Directory.GetCurrentDirectory(), ".tmp", "checkpoint-bench");
        for (int i = 0; i < args.Length; i++)
        {
            if (args[i] == "--bytes") bytes = long.Parse(args[++i], CultureInfo.InvariantCulture);
            else if (args[i] == "--dir") root = args[++i];
        }
        Directory.CreateDirectory(root);
        var target = Path.Combine(root, "ckpt");
        long perTensor = bytes / 4 / 4;
        var state = Enumerable.Range(0, 4)
            .Select(i => new KeyValuePair<string, object?>($"ema.layer{i}.weight", torch.randn(perTensor)))
            .ToList();
        try
        {
            var saves = new List<double>();
            var loads = new List<double>();
            var copies = new List<double>();
            for (int round = 0; round < 5; round++)
            {
                // Each save writes a fresh folder, as cp writes a fresh file (replacing a checkpoint also deletes the old one).
                if (Directory.Exists(target)) Directory.Delete(target, recursive: true);
                var clock = Stopwatch.StartNew();
                DcpWriter.Save(target, state);
                saves.Add(clock.Elapsed.TotalSeconds);

                clock.Restart();
                var reader = DcpReader.Open(target);
                foreach (var entry in reader.Entries) reader.ReadTensor(entry.Key).Dispose();
                loads.Add(clock.Elapsed.TotalSeconds);

                var data = Path.Combine(target, "__0_0.distcp");
                var copy = Path.Combine(root, "copy.distcp");
                File.Delete(copy);
                clock.Restart();
                Shell("cp", data, copy);
                Shell("sync", copy);
                copies.Add(clock.Elapsed.TotalSeconds);
                File.Delete(copy);
            }
            double fileBytes = new FileInfo(Path.Combine(target, "__0_0.distcp")).Length;
            double save = Timing.Median(saves), load = Timing.Median(loads), cp = Timing.Median(copies);
            // Each round's save and load against the cp of the same round (the disk's speed drifts between rounds).
            double saveRatio = Timing.Median(saves.Zip(copies, (s, c) => c / s).ToList());
            double loadRatio = Timing.Median(loads.Zip(copies, (l, c) => c / l).ToList());
            var o = new MemoryStream();
            using (var w = new Utf8JsonWriter(o, new JsonWriterOptions { Indented = true }))
            {
                w.WriteStartObject();
                w.WriteNumber("bytes", fileBytes);
                w.WriteNumber("save_s", Math.Round(save, 3));
                w.WriteNumber("load_s", Math.Round(load, 3));
                w.WriteNumber("cp_sync_s", Math.Round(cp, 3));
                w.WriteNumber("save_GBps", Math.Round(fileBytes / save / 1e9, 2));
                w.WriteNumber("load_GBps", Math.Round(fileBytes / load / 1e9, 2));
                w.WriteNumber("cp_GBps", Math.Round(fileBytes / cp / 1e9, 2));
                w.WriteNumber("save_ratio_to_cp", Math.Round(saveRatio, 2));
                w.WriteNumber("load_ratio_to_cp", Math.Round(loadRatio, 2));
                w.WriteString("note", "medians of 5 rounds, ratios paired per round; save includes fsync of data and metadata, cp is followed by sync of the copy; load reads every tensor into memory");
                w.WriteEndObject();
            }
            Console.WriteLine(System.Text.Encoding.UTF8.GetString(o.ToArray()));
            return 0;
        }
        finally
        {
            foreach (var (_, v) in state) (v as torch.Tensor)?.Dispose();
            if (Directory.Exists(root)) Directory.Delete(root, recursive: true);
        }
    }

    private static void Shell(string command, params string[] arguments)
    {
        var start = new ProcessStartInfo(command) { UseShellExecute = false };
        foreach (var a in arguments) start.ArgumentList.Add(a);
        using var process = Process.Start(start)!;
        process.WaitForExit();
        if (process.ExitCode != 0) throw new InvalidOperationException($"{command} failed with exit code {process.ExitCode}");
    }
}

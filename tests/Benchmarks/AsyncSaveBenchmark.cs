using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Text.Json;

namespace EmaGen.Benchmarks;

/// <summary>
/// <c>checkpoint-async</c>: how long <see cref="EmaManager{TModel}.SaveAsync"/> holds the training thread (the clone)
/// against a blocking <see cref="EmaManager{TModel}.Save"/> of the same EMA, paired per round, plus the background
/// write's total time. Prints one JSON object.
/// </summary>
internal static class AsyncSaveBenchmark
{
    public static int Run(string[] args)
    {
        long elements = 250_000_000;
        string root = Path.Combine(Directory.GetCurrentDirectory(), ".tmp", "async-save-bench");
        for (int i = 0; i < args.Length; i++)
        {
            if (args[i] == "--params") elements = long.Parse(args[++i], CultureInfo.InvariantCulture);
            else if (args[i] == "--dir") root = args[++i];
        }
        Directory.CreateDirectory(root);
        try
        {
            using var model = new SyntheticModel(elements, 100, TorchSharp.torch.ScalarType.Float32);
            using var ema = new EmaManager<SyntheticModel>(model, 0.999);
            var blocking = new List<double>();
            var calling = new List<double>();
            var total = new List<double>();
            for (int round = 0; round < 5; round++)
            {
                var sync = Path.Combine(root, "sync");
                var async = Path.Combine(root, "async");
                foreach (var dir in new[] { sync, async }) if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);

                var clock = Stopwatch.StartNew();
                ema.Save(sync);
                blocking.Add(clock.Elapsed.TotalSeconds);

                clock.Restart();
                var task = ema.SaveAsync(async);
                calling.Add(clock.Elapsed.TotalSeconds);
                task.GetAwaiter().GetResult();
                total.Add(clock.Elapsed.TotalSeconds);
            }
            var o = new MemoryStream();
            using (var w = new Utf8JsonWriter(o, new JsonWriterOptions { Indented = true }))
            {
                w.WriteStartObject();
                w.WriteNumber("shadow_bytes", ema.ShadowBytes);
                w.WriteNumber("save_blocking_s", Math.Round(Timing.Median(blocking), 3));
                w.WriteNumber("save_async_calling_thread_s", Math.Round(Timing.Median(calling), 3));
                w.WriteNumber("save_async_total_s", Math.Round(Timing.Median(total), 3));
                // Share of the blocking save's time that SaveAsync still takes from the training thread, paired per round.
                w.WriteNumber("calling_thread_ratio", Math.Round(Timing.Median(calling.Zip(blocking, (c, b) => c / b).ToList()), 3));
                w.WriteString("note", "medians of 5 rounds; both write fresh folders with fsync; the async total runs alone here, not beside training");
                w.WriteEndObject();
            }
            Console.WriteLine(System.Text.Encoding.UTF8.GetString(o.ToArray()));
            return 0;
        }
        finally
        {
            if (Directory.Exists(root)) Directory.Delete(root, recursive: true);
        }
    }
}

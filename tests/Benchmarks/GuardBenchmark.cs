using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using TorchSharp;
using static TorchSharp.torch;

namespace EmaGen.Benchmarks;

/// <summary>
/// The non-finite guard's cost, paired in one run: the default update (guard on) against the same update with the
/// guard off (<see cref="NonFinitePolicy.Allow"/>) and with the RMS distance on, each over its own copy of the model,
/// round-robin from a cold cache (<see cref="Timing.RoundRobin"/>), on the default threads and on one thread (the
/// one-thread pair is less exposed to other processes taking the second core), and the guard switched on and off over
/// one manager's own buffers (no placement of two models' memory in the ratio). Ratios are per round, then the median.
/// <c>guard [--params N] [--tensors T] [--rounds R]</c>
/// </summary>
internal static class GuardBenchmark
{
    public static int Run(string[] args)
    {
        long elements = 50_000_000;
        int tensors = 300;
        int rounds = 41;
        for (int i = 0; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            switch (args[i])
            {
                case "--params": elements = long.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--tensors": tensors = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--rounds": rounds = Math.Max(9, int.Parse(Next(), CultureInfo.InvariantCulture)); break;
                default: throw new ArgumentException($"unknown option {args[i]}");
            }
        }
        torch.manual_seed(0);
        var shapes = SyntheticModel.Shapes(elements, tensors);
        var models = new List<SyntheticModel>();
        var managers = new List<EmaManager<SyntheticModel>>();
        var variants = new List<(string Name, Action Step)>();
        void Add(string name, EmaOptions options)
        {
            var model = new SyntheticModel(shapes, ScalarType.Float32);
            var ema = new EmaManager<SyntheticModel>(model, options);
            models.Add(model);
            managers.Add(ema);
            variants.Add((name, () => ema.Update(model)));
        }
        Add("guard_on", new EmaOptions { Decay = 0.999 });
        Add("guard_off", new EmaOptions { Decay = 0.999, NonFinite = NonFinitePolicy.Allow });
        Add("rms_distance", new EmaOptions { Decay = 0.999, ReportDistance = true });
        Add("guard_on_1_thread", new EmaOptions { Decay = 0.999, Threads = 1 });
        Add("guard_off_1_thread", new EmaOptions { Decay = 0.999, Threads = 1, NonFinite = NonFinitePolicy.Allow });
        Add("rms_distance_1_thread", new EmaOptions { Decay = 0.999, Threads = 1, ReportDistance = true });
        // One manager, one model: the guard switched on and off over the same buffers, so that where two models' memory
        // lies (which moves a variant's time by a few percent whatever it runs) is not in the ratio.
        var same = managers[0];
        var sameModel = models[0];
        variants.Add(("same_buffers_guard_on", () => same.Update(sameModel)));
        variants.Add(("same_buffers_guard_off", () =>
        {
            same.SetRawGuardForBenchmark(false);
            same.Update(sameModel);
            same.SetRawGuardForBenchmark(true);
        }));
        Console.Error.WriteLine($"{elements:N0} fp32 elements in {tensors} tensors, {rounds} rounds, threads {managers[0].UpdateThreads}");
        var samples = Timing.RoundRobin(variants, rounds);
        foreach (var (name, _) in variants) Console.WriteLine($"{name,-24} median {Timing.Median(samples[name]),8:F3} ms");
        double Paired(string a, string b) => Timing.Median(samples[a].Zip(samples[b], (x, y) => x / y).ToList());
        Console.WriteLine($"guard on / off, paired median:            {Paired("guard_on", "guard_off"):F3}");
        Console.WriteLine($"guard on / off, 1 thread, paired median:  {Paired("guard_on_1_thread", "guard_off_1_thread"):F3}");
        Console.WriteLine($"guard on / off, same buffers:             {Paired("same_buffers_guard_on", "same_buffers_guard_off"):F3}");
        Console.WriteLine($"rms distance / guard on, paired median:   {Paired("rms_distance", "guard_on"):F3}");
        Console.WriteLine($"rms distance / guard on, 1 thread:        {Paired("rms_distance_1_thread", "guard_on_1_thread"):F3}");
        foreach (var m in managers) m.Dispose();
        foreach (var m in models) m.Dispose();
        return 0;
    }
}

using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text.Json;
using static TorchSharp.torch;

namespace EmaGen.Benchmarks;

/// <summary>
/// <c>update --bema</c>: a fused update of an EMA profile beside a BEMA profile against one of two EMA profiles of the
/// same model, paired per round (the target: within 3%), and the BEMA profile's correction pass (its weights
/// copied into a model: reads θ, θ₀ and the EMA, writes the model; 16 bytes per fp32 element at best) against the
/// fastest in-place pass of the run (<see cref="InPlacePasses"/>, 12 bytes per element), scaled to bytes; the same
/// correction by a one-thread manager beside it.
/// </summary>
internal sealed class BemaBenchmark
{
    private readonly long _elements;
    private readonly int _tensors;
    private readonly int _rounds;
    private readonly int? _threads;

    public BemaBenchmark(long elements, int tensors, int rounds, int? threads) => (_elements, _tensors, _rounds, _threads) = (elements, tensors, rounds, threads);

    public string Run(TextWriter log)
    {
        log.WriteLine($"building {_tensors} tensors, {_elements:N0} float32 elements...");
        // Each manager its own model: a manager packs its model's parameters into its flat buffer, and a second manager
        // over the same model would find them sharing storage and stay unpacked (a slower path at small tensors).
        using var model = new SyntheticModel(_elements, _tensors, ScalarType.Float32);
        using var bemaModel = new SyntheticModel(_elements, _tensors, ScalarType.Float32);
        using var oneThreadModel = new SyntheticModel(_elements, _tensors, ScalarType.Float32);
        using var export = new SyntheticModel(_elements, _tensors, ScalarType.Float32);
        using var twoEma = new EmaManager<SyntheticModel>(model, new EmaOptions
        {
            Profiles = [new EmaProfileOptions("a", EmaSchedule.Constant(0.999)), new EmaProfileOptions("b", EmaSchedule.Constant(0.9999))],
            Threads = _threads,
        });
        using var emaAndBema = new EmaManager<SyntheticModel>(bemaModel, new EmaOptions
        {
            Profiles = [new EmaProfileOptions("a", EmaSchedule.Constant(0.999)), new EmaProfileOptions("bema", EmaSchedule.Bema())],
            Threads = _threads,
        });
        // The correction pass by a manager of its own: a copy checks the model it is given, so a manager that copied into
        // another model re-checks every tensor at its next update (what alternating copies and updates would time).
        using var correctionModel = new SyntheticModel(_elements, _tensors, ScalarType.Float32);
        using var correction = new EmaManager<SyntheticModel>(correctionModel, new EmaOptions
        {
            Profiles = [new EmaProfileOptions("a", EmaSchedule.Constant(0.999)), new EmaProfileOptions("bema", EmaSchedule.Bema())],
            Threads = _threads,
        });
        correction.Update(correctionModel);
        // The same correction on one thread: what the pool's split gains, in the same rounds.
        using var oneThread = new EmaManager<SyntheticModel>(oneThreadModel, new EmaOptions
        {
            Profiles = [new EmaProfileOptions("bema", EmaSchedule.Bema())],
            Threads = 1,
        });
        oneThread.Update(oneThreadModel);
        emaAndBema.Update(bemaModel);
        log.WriteLine($"two EMA: {twoEma.UpdatePath}");
        log.WriteLine($"EMA + BEMA: {emaAndBema.UpdatePath}");
        using var passes = new InPlacePasses(_elements, 0.999, twoEma.UpdateThreads);
        var variants = new List<(string Name, Action Step)>
        {
            ("two_ema_profiles", () => twoEma.Update(model)),
            ("ema_and_bema_profiles", () => emaAndBema.Update(bemaModel)),
            ("bema_correction_pass", () => correction.Profiles[1].CopyTo(export)),
            ("bema_correction_pass_one_thread", () => oneThread.Profiles[0].CopyTo(export)),
        };
        variants.AddRange(passes.Variants().Select(v => (v.Name, v.Step)));
        log.WriteLine($"warming up ({twoEma.UpdateThreads} threads)...");
        var samples = Timing.RoundRobin(variants, _rounds);
        double updateRatio = Timing.Median(samples["ema_and_bema_profiles"].Zip(samples["two_ema_profiles"], (a, b) => a / b).ToList());
        string limit = InPlacePasses.Limit(samples);
        // Per round: the correction's time over the time the limit pass would take for 16 bytes per element.
        double correctionRatio = Timing.Median(samples["bema_correction_pass"].Zip(samples[limit], (c, l) => c / (l * 16.0 / 12.0)).ToList());
        double oneThreadRatio = Timing.Median(samples["bema_correction_pass_one_thread"].Zip(samples[limit], (c, l) => c / (l * 16.0 / 12.0)).ToList());

        var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteNumber("numel", _elements);
            w.WriteNumber("tensors", _tensors);
            w.WriteNumber("threads", twoEma.UpdateThreads);
            w.WriteNumber("rounds", _rounds);
            w.WriteStartObject("variants_ms");
            foreach (var (name, _) in variants)
            {
                w.WriteNumber(name, Math.Round(Timing.Median(samples[name]), 3));
                log.WriteLine($"{name,-26} {Timing.Median(samples[name]),9:F3} ms");
            }
            w.WriteEndObject();
            w.WriteNumber("ema_and_bema_to_two_ema_ratio", Math.Round(updateRatio, 3));
            w.WriteBoolean("within_3_percent", updateRatio <= 1.03);
            w.WriteString("limit", limit);
            w.WriteNumber("correction_pass_to_limit_ratio", Math.Round(correctionRatio, 3));
            w.WriteNumber("one_thread_correction_pass_to_limit_ratio", Math.Round(oneThreadRatio, 3));
            w.WriteEndObject();
        }
        log.WriteLine($"EMA+BEMA / two EMA update: {updateRatio:F3}; correction pass / limit (16 B/element): {correctionRatio:F3}, on one thread {oneThreadRatio:F3} (limit {limit})");
        return System.Text.Encoding.UTF8.GetString(stream.ToArray());
    }
}

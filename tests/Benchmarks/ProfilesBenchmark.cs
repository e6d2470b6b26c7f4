using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text.Json;
using static TorchSharp.torch;

namespace EmaGen.Benchmarks;

/// <summary>
/// <c>update --profiles K</c>: one fused update of K profiles against one single-profile update of the same model, paired
/// per round. The fp32 update moves 12 bytes per element for one profile and 4 + 8K for K fused ones, so the ideal
/// ratio is (1 + 2K) / 3 (5/3 for K = 2); K separate managers would take K times the single update.
/// </summary>
internal sealed class ProfilesBenchmark
{
    private const double TargetRatioForTwo = 1.75;

    private readonly long _elements;
    private readonly int _tensors;
    private readonly ScalarType _dtype;
    private readonly int _profiles;
    private readonly int _rounds;
    private readonly int? _threads;

    public ProfilesBenchmark(long elements, int tensors, ScalarType dtype, int profiles, int rounds, int? threads)
    {
        (_elements, _tensors, _dtype, _profiles, _rounds, _threads) = (elements, tensors, dtype, profiles, rounds, threads);
    }

    private int ParameterBytes => _dtype == ScalarType.BFloat16 ? 2 : 4;

    public string Run(TextWriter log)
    {
        log.WriteLine($"building {_tensors} tensors, {_elements:N0} {_dtype} elements, {_profiles} profiles...");
        using var model = new SyntheticModel(_elements, _tensors, _dtype);
        using var packedModel = new SyntheticModel(_elements, _tensors, _dtype);
        var profileOptions = Enumerable.Range(0, _profiles)
            .Select(k => new EmaProfileOptions($"p{k}", EmaSchedule.Constant(1 - 1e-3 / (k + 1))))
            .ToArray();

        using var single = new EmaManager<SyntheticModel>(model, new EmaOptions { Decay = 0.999, Threads = _threads });
        using var fused = new EmaManager<SyntheticModel>(model, new EmaOptions { Profiles = profileOptions, Threads = _threads });
        var separate = profileOptions.Select(p => new EmaManager<SyntheticModel>(model, new EmaOptions { Schedule = p.Schedule, Threads = _threads })).ToArray();
        using var packedSingle = new EmaManager<SyntheticModel>(packedModel, new EmaOptions { Decay = 0.999, PackParameters = true, Threads = _threads });
        using var packedFused = new EmaManager<SyntheticModel>(packedModel, new EmaOptions { Profiles = profileOptions, PackParameters = true, Threads = _threads });

        var variants = new List<(string Name, Action Step)>
        {
            ("single_profile", () => single.Update(model)),
            ("fused_profiles", () => fused.Update(model)),
            ("separate_managers", () => { foreach (var m in separate) m.Update(model); }),
            ("packed_single_profile", () => packedSingle.Update(packedModel)),
            ("packed_fused_profiles", () => packedFused.Update(packedModel)),
        };

        log.WriteLine($"warming up ({fused.UpdateThreads} threads)...");
        var samples = Timing.RoundRobin(variants, _rounds);

        long managed = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 20; i++) fused.Update(model);
        double managedPerUpdate = (GC.GetAllocatedBytesForCurrentThread() - managed) / 20.0;

        double singleBytes = ParameterBytes + 8;
        double fusedBytes = ParameterBytes + 8.0 * _profiles;
        double ideal = fusedBytes / singleBytes;
        double ratio = Paired(samples["fused_profiles"], samples["single_profile"]);
        double packedRatio = Paired(samples["packed_fused_profiles"], samples["packed_single_profile"]);
        double separateRatio = Paired(samples["separate_managers"], samples["single_profile"]);

        var stream = new MemoryStream();
        using (var writer = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            writer.WriteStartObject();
            writer.WriteNumber("numel", _elements);
            writer.WriteNumber("tensors", _tensors);
            writer.WriteString("dtype", _dtype == ScalarType.BFloat16 ? "bfloat16" : "float32");
            writer.WriteNumber("profiles", _profiles);
            writer.WriteNumber("threads", fused.UpdateThreads);
            writer.WriteNumber("rounds", _rounds);
            writer.WriteStartObject("variants");
            foreach (var v in variants)
            {
                double ms = Timing.Median(samples[v.Name]);
                double bytes = v.Name.Contains("single") ? singleBytes : fusedBytes;
                if (v.Name == "separate_managers") bytes = singleBytes * _profiles;
                writer.WriteStartObject(v.Name);
                writer.WriteNumber("ms", Math.Round(ms, 3));
                writer.WriteNumber("GBps", Math.Round(_elements * bytes / (ms / 1000.0) / 1e9, 1));
                writer.WriteEndObject();
                log.WriteLine($"{v.Name,-24} {ms,9:F3} ms");
            }
            writer.WriteEndObject();
            writer.WriteNumber("ideal_ratio", Math.Round(ideal, 3));
            // Time of one fused K-profile update over one single-profile update, paired per round, median over rounds.
            writer.WriteNumber("fused_to_single_ratio", Math.Round(ratio, 3));
            writer.WriteNumber("packed_fused_to_single_ratio", Math.Round(packedRatio, 3));
            writer.WriteNumber("separate_to_single_ratio", Math.Round(separateRatio, 3));
            if (_profiles == 2) writer.WriteBoolean("meets_target_1_75", ratio <= TargetRatioForTwo);
            writer.WriteNumber("managed_bytes_per_fused_update", managedPerUpdate);
            writer.WriteEndObject();
        }
        foreach (var m in separate) m.Dispose();
        log.WriteLine($"fused {_profiles} profiles / single: {ratio:F3} (ideal {ideal:F3}; packed {packedRatio:F3}; {_profiles} separate managers {separateRatio:F3})");
        return System.Text.Encoding.UTF8.GetString(stream.ToArray());
    }

    private static double Paired(List<double> numerator, List<double> denominator) =>
        Timing.Median(numerator.Zip(denominator, (a, b) => a / b).ToList());
}

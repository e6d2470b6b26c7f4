using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Text.Json;
using EmaGen;
using EmaGen.Benchmarks;
using TorchSharp;
using static TorchSharp.torch;

// dotnet run -c Release --project tests/Benchmarks -- update --params 50000000 --tensors 300 --dtype float32 --json
if (args.Length > 0 && args[0] == "checkpoint")
{
    return CheckpointBenchmark.Run(args[1..]);
}
if (args.Length > 0 && args[0] == "checkpoint-async")
{
    return AsyncSaveBenchmark.Run(args[1..]);
}
if (args.Length > 0 && args[0] == "guard")
{
    return GuardBenchmark.Run(args[1..]);
}
if (args.Length > 0 && args[0] == "tool-memory")
{
    return ToolMemoryBenchmark.Run(args[1..]);
}
if (args.Length > 0 && args[0] == "overhead")
{
    return OverheadBenchmark.Run(args[1..]);
}
if (args.Length == 0 || args[0] != "update")
{
    Console.Error.WriteLine("usage: EmaGen.Benchmarks update [--params N] [--tensors T | --model gpt|gpt-dynamic] [--dtype float32|bfloat16] [--rounds R] [--threads N] [--profiles K | --bema] [--world-size W --rank R] [--no-hugepages] [--json]");
    Console.Error.WriteLine("       EmaGen.Benchmarks checkpoint [--bytes N] [--dir PATH]");
    Console.Error.WriteLine("       EmaGen.Benchmarks checkpoint-async [--params N] [--dir PATH]");
    Console.Error.WriteLine("       EmaGen.Benchmarks tool-memory [--gb 2] [--tensor-mb 64] [--dir PATH] [--cli EmaGen.Cli.dll]");
    Console.Error.WriteLine("       EmaGen.Benchmarks overhead [--params N] [--tensors T]");
    Console.Error.WriteLine("       EmaGen.Benchmarks guard [--params N] [--tensors T] [--rounds R]");
    return 2;
}
long elements = 50_000_000;
int tensors = 300;
int rounds = 21;
int? threadsOption = null;
int profiles = 1;
bool bema = false;
bool json = false;
string? modelShape = null;
int worldSize = 1, rank = 0;
var dtype = ScalarType.Float32;
for (int i = 1; i < args.Length; i++)
{
    string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
    switch (args[i])
    {
        case "--params": elements = long.Parse(Next(), CultureInfo.InvariantCulture); break;
        case "--tensors": tensors = int.Parse(Next(), CultureInfo.InvariantCulture); break;
        case "--rounds": rounds = Math.Max(9, int.Parse(Next(), CultureInfo.InvariantCulture)); break;
        case "--json": json = true; break;
        // The manager's buffers on ordinary pages, as before they were advised onto huge pages (the before/after figure).
        case "--no-hugepages": HugePages.OffForBenchmark = true; break;
        case "--threads": threadsOption = int.Parse(Next(), CultureInfo.InvariantCulture); break;
        case "--profiles": profiles = int.Parse(Next(), CultureInfo.InvariantCulture); break;
        case "--bema": bema = true; break;
        case "--model":
            modelShape = Next();
            if (modelShape is not ("gpt" or "gpt-dynamic")) throw new ArgumentException("--model takes gpt or gpt-dynamic");
            break;
        case "--world-size": worldSize = int.Parse(Next(), CultureInfo.InvariantCulture); break;
        case "--rank": rank = int.Parse(Next(), CultureInfo.InvariantCulture); break;
        case "--dtype":
            dtype = Next() switch
            {
                "float32" => ScalarType.Float32,
                "bfloat16" => ScalarType.BFloat16,
                var other => throw new ArgumentException($"unsupported --dtype {other}"),
            };
            break;
        default: throw new ArgumentException($"unknown option {args[i]}");
    }
}

const double Decay = 0.999;
torch.manual_seed(0);
var shapes = modelShape is "gpt" or "gpt-dynamic" ? SyntheticModel.GptShapes() : SyntheticModel.Shapes(elements, tensors);
var report = bema
    ? new BemaBenchmark(elements, tensors, rounds, threadsOption).Run(Console.Error)
    : profiles > 1
    ? new ProfilesBenchmark(elements, tensors, dtype, profiles, rounds, threadsOption).Run(Console.Error)
    : worldSize > 1
        ? new ShardedUpdateBenchmark(shapes, dtype, Decay, rounds, threadsOption, worldSize, rank).Run(Console.Error)
        : new UpdateBenchmark(shapes, dtype, Decay, rounds, threadsOption, modelShape ?? "synthetic").Run(Console.Error);
if (json)
{
    Console.WriteLine(report);
}
return 0;

internal sealed unsafe class UpdateBenchmark
{
    private readonly IReadOnlyList<long[]> _shapes;
    private readonly long _elements;
    private readonly ScalarType _dtype;
    private readonly double _decay;
    private readonly int _rounds;
    private readonly string _modelName;

    private readonly int? _threads;

    public UpdateBenchmark(IReadOnlyList<long[]> shapes, ScalarType dtype, double decay, int rounds, int? threads, string modelName)
    {
        _threads = threads;
        _shapes = shapes;
        _elements = shapes.Sum(s => s.Aggregate(1L, (a, b) => a * b));
        _dtype = dtype;
        _decay = decay;
        _rounds = rounds;
        _modelName = modelName;
    }

    private int BytesPerElement => _dtype == ScalarType.BFloat16 ? 10 : 12;

    public string Run(TextWriter log)
    {
        log.WriteLine($"building {_shapes.Count} tensors ({_modelName}), {_elements:N0} {_dtype} elements...");
        bool dynamic = _modelName == "gpt-dynamic";
        using var model = new SyntheticModel(_shapes, _dtype, dynamic);
        using var packedModel = new SyntheticModel(_shapes, _dtype, dynamic);

        var bindClock = Stopwatch.StartNew();
        if (_threads is { } fixedThreads) torch.set_num_threads(fixedThreads);
        using var ema = new EmaManager<SyntheticModel>(model, new EmaOptions { Decay = _decay, Threads = _threads });
        double bindMs = bindClock.Elapsed.TotalMilliseconds;
        // The default packs; the unpacked variant is what a model whose parameters cannot be packed gets.
        using var packed = new EmaManager<SyntheticModel>(packedModel, new EmaOptions { Decay = _decay, PackParameters = false, Threads = _threads });
        using var single = new EmaManager<SyntheticModel>(model, new EmaOptions { Decay = _decay, Threads = 1 });
        // The non-finite guard is on by default: emagen_guard_off switches it off over the default manager's own buffers
        // (so where two models' memory lies, a few per cent either way, is not in the ratio); the RMS distance runs on a
        // manager of its own.
        using var distanceModel = new SyntheticModel(_shapes, _dtype, dynamic);
        using var distance = new EmaManager<SyntheticModel>(distanceModel, new EmaOptions { Decay = _decay, Threads = _threads, ReportDistance = true });
        // The update as it was before it ran on LibTorch's OpenMP team: helper threads of its own (the root cause the
        // after-op figures show).
        using var ownThreadsModel = new SyntheticModel(_shapes, _dtype, dynamic);
        using var ownThreads = new EmaManager<SyntheticModel>(ownThreadsModel, new EmaOptions { Decay = _decay, Threads = _threads, OwnUpdateThreads = true });
        int threads = ema.UpdateThreads;

        // Baselines over the same parameters: the seed's mul_+add_ per tensor, and lerp_ per tensor with a cached weight.
        var weights = model.Weights.ToArray();
        // Copies: to_type to the same dtype would return the parameter itself.
        var seedShadows = weights.Select(p => p.detach().to_type(ScalarType.Float32, copy: true).DetachFromDisposeScope()).ToArray();
        var lerpShadows = weights.Select(p => p.detach().to_type(ScalarType.Float32, copy: true).DetachFromDisposeScope()).ToArray();
        using var lerpWeight = torch.tensor((float)(1 - _decay));

        // The limit's pass over the update's own memory: the default manager's flat buffers (one fp32 group here).
        var own = ema.FirstGroupForBenchmark();
        bool ownUsable = _dtype == ScalarType.Float32 && own.Shadow != IntPtr.Zero && own.Parameters != IntPtr.Zero && own.Elements >= _elements;
        using var passes = new InPlacePasses(_elements, _decay, threads, ownUsable ? (own.Shadow, own.Parameters) : null);
        using var torchOps = new TorchOpsVariants(_shapes, _dtype, _decay, _threads, dynamic);

        var variants = new List<(string Name, int Bytes, Action Step)>
        {
            ("emagen_default", BytesPerElement, () => ema.Update(model)),
            ("emagen_unpacked", BytesPerElement, () => packed.Update(packedModel)),
            ("emagen_1_thread", BytesPerElement, () => single.Update(model)),
            ("emagen_after_libtorch_op", BytesPerElement, () => ema.Update(model)),
            ("emagen_guard_off", BytesPerElement, () =>
            {
                ema.SetRawGuardForBenchmark(false);
                try
                {
                    ema.Update(model);
                }
                finally
                {
                    ema.SetRawGuardForBenchmark(true);
                }
            }),
            ("emagen_own_threads", BytesPerElement, () => ownThreads.Update(ownThreadsModel)),
            ("emagen_own_threads_after_op", BytesPerElement, () => ownThreads.Update(ownThreadsModel)),
            ("emagen_rms_distance", BytesPerElement, () => distance.Update(distanceModel)),
            ("seed_mul_add_per_tensor", BytesPerElement, () =>
            {
                using var _ = torch.no_grad();
                for (int i = 0; i < weights.Length; i++) seedShadows[i].mul_(_decay).add_(weights[i], alpha: 1 - _decay);
            }),
        };
        variants.AddRange(torchOps.Variants(BytesPerElement));
        variants.AddRange(passes.Variants());
        if (_dtype == ScalarType.BFloat16) variants.Add(passes.BFloat16Variant());
        if (_dtype == ScalarType.Float32)
        {
            variants.Insert(5, ("lerp_per_tensor", 12, () =>
            {
                using var _ = torch.no_grad();
                for (int i = 0; i < weights.Length; i++) lerpShadows[i].lerp_(weights[i], lerpWeight);
            }));
        }

        log.WriteLine($"warming up ({threads} threads)...");
        // What a trainer's update meets: the optimizer's last LibTorch op has just run and its OpenMP workers still spin.
        using var opInput = torch.ones(1 << 20);
        Action libTorchOp = () => { using var _ = torch.no_grad(); opInput.add_(1f); };
        var before = new Dictionary<string, Action> { ["emagen_after_libtorch_op"] = libTorchOp, ["emagen_own_threads_after_op"] = libTorchOp };
        var samples = Timing.RoundRobin(variants.Select(v => (v.Name, v.Step)).ToList(), _rounds, before);

        long managedThread = GC.GetAllocatedBytesForCurrentThread();
        long managedAll = GC.GetTotalAllocatedBytes(precise: true);
        var tensorStats = DisposeScopeManager.Statistics.TensorStatistics;
        long tensorsBefore = tensorStats.CreatedInScopeCount + tensorStats.CreatedOutsideScopeCount;
        const int allocationSteps = 20;
        for (int i = 0; i < allocationSteps; i++) ema.Update(model);
        double managedPerUpdate = (double)(GC.GetAllocatedBytesForCurrentThread() - managedThread) / allocationSteps;
        double managedAllThreads = (double)(GC.GetTotalAllocatedBytes(precise: true) - managedAll) / allocationSteps;
        double tensorsPerUpdate = (double)(tensorStats.CreatedInScopeCount + tensorStats.CreatedOutsideScopeCount - tensorsBefore) / allocationSteps;
        double unpackedManaged = ManagedBytesPerCall(() => packed.Update(packedModel));

        torchOps.Measure();
        double bind1000Ms = MeasureBind1000();

        var stream = new MemoryStream();
        using (var writer = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            writer.WriteStartObject();
            writer.WriteString("model", _modelName);
            writer.WriteNumber("numel", _elements);
            writer.WriteNumber("tensors", weights.Length);
            writer.WriteString("dtype", _dtype == ScalarType.BFloat16 ? "bfloat16" : "float32");
            writer.WriteString("shadow_dtype", "float32");
            writer.WriteNumber("threads", threads);
            writer.WriteNumber("rounds", _rounds);
            writer.WriteStartObject("variants");
            double probeGBps = 0, defaultGBps = 0, packedGBps = 0, torchGBps = 0;
            string probeLoop = "";
            foreach (var v in variants)
            {
                double ms = Timing.Median(samples[v.Name]);
                double gbps = _elements * (double)v.Bytes / (ms / 1000.0) / 1e9;
                if (v.Name.StartsWith("probe_", StringComparison.Ordinal) && v.Bytes == 12 && gbps > probeGBps)
                {
                    probeGBps = gbps;
                    probeLoop = v.Name;
                }
                if (v.Name == "libtorch_flat_lerp") torchGBps = gbps;
                if (v.Name == "emagen_default") defaultGBps = gbps;
                if (v.Name == "emagen_unpacked") packedGBps = gbps;
                writer.WriteStartObject(v.Name);
                writer.WriteNumber("ms", Math.Round(ms, 3));
                writer.WriteNumber("GBps", Math.Round(gbps, 1));
                writer.WriteNumber("bytes_per_element", v.Bytes);
                writer.WriteEndObject();
                log.WriteLine($"{v.Name,-26} {ms,9:F3} ms  {gbps,7:F1} GB/s");
            }
            writer.WriteEndObject();
            writer.WriteString("probe", probeLoop);
            writer.WriteNumber("probe_GBps", Math.Round(probeGBps, 1));
            // The ratios pair each round's update with the probe run right beside it (same machine state; this VM's
            // second core changes speed from second to second), then take the median over rounds.
            writer.WriteNumber("ratio_to_probe", Math.Round(PairedRatio(samples["emagen_default"], samples[probeLoop], BytesPerElement), 3));
            writer.WriteNumber("unpacked_ratio_to_probe", Math.Round(PairedRatio(samples["emagen_unpacked"], samples[probeLoop], BytesPerElement), 3));
            writer.WriteNumber("ratio_of_medians_to_probe", Math.Round(defaultGBps / probeGBps, 3));
            writer.WriteNumber("unpacked_ratio_of_medians_to_probe", Math.Round(packedGBps / probeGBps, 3));
            writer.WriteNumber("ratio_to_libtorch_flat_lerp", Math.Round(defaultGBps / torchGBps, 3));
            // The limit is the fastest in-place pass of this run, LibTorch's flat lerp_ included (paired per round).
            var limit = InPlacePasses.Limit(samples);
            writer.WriteString("limit", limit);
            writer.WriteNumber("limit_GBps", Math.Round(Math.Max(probeGBps, torchGBps), 1));
            writer.WriteNumber("ratio_to_limit", Math.Round(PairedRatio(samples["emagen_default"], samples[limit], BytesPerElement), 3));
            writer.WriteNumber("unpacked_ratio_to_limit", Math.Round(PairedRatio(samples["emagen_unpacked"], samples[limit], BytesPerElement), 3));
            writer.WriteNumber("after_libtorch_op_ratio_to_limit", Math.Round(PairedRatio(samples["emagen_after_libtorch_op"], samples[limit], BytesPerElement), 3));
            writer.WriteNumber("own_threads_ratio_to_limit", Math.Round(PairedRatio(samples["emagen_own_threads"], samples[limit], BytesPerElement), 3));
            writer.WriteNumber("own_threads_after_op_ratio_to_limit", Math.Round(PairedRatio(samples["emagen_own_threads_after_op"], samples[limit], BytesPerElement), 3));
            // The Vector512 pass over the update's own memory (the default manager's buffers: huge pages where offered,
            // unless --no-hugepages, which hugepages_off reports), against the same pass over ordinary tensors (above 1:
            // faster); it is one of the passes the limit is taken from.
            var ownProbe = samples[InPlacePasses.OwnMemoryProbe];
            writer.WriteBoolean("hugepages_off", HugePages.OffForBenchmark);
            writer.WriteBoolean("own_memory_probe_on_update_buffers", ownUsable);
            writer.WriteNumber("own_memory_probe_speedup", Math.Round(PairedOver(samples["probe_fma"], ownProbe), 3));
            writer.WriteNumber("ratio_to_own_memory_probe", Math.Round(PairedRatio(samples["emagen_default"], ownProbe, BytesPerElement), 3));
            // The comparisons, each the median of per-round ratios.
            writer.WriteNumber("default_over_unpacked", Math.Round(PairedOver(samples["emagen_default"], samples["emagen_unpacked"]), 3));
            if (samples.ContainsKey("lerp_per_tensor")) writer.WriteNumber("default_over_lerp_per_tensor", Math.Round(PairedOver(samples["emagen_default"], samples["lerp_per_tensor"]), 3));
            writer.WriteNumber("seed_mul_add_over_default", Math.Round(PairedOver(samples["seed_mul_add_per_tensor"], samples["emagen_default"]), 3));
            torchOps.Write(writer, samples, limit, BytesPerElement);
            // The guard's cost: each round's default update (guard on) over the same round's guard-off update, median
            // over rounds; likewise the RMS distance option over the default.
            writer.WriteNumber("guard_on_ms", Math.Round(Timing.Median(samples["emagen_default"]), 3));
            writer.WriteNumber("guard_off_ms", Math.Round(Timing.Median(samples["emagen_guard_off"]), 3));
            double guardOnOverOff = PairedOver(samples["emagen_default"], samples["emagen_guard_off"]);
            double rmsOverDefault = PairedOver(samples["emagen_rms_distance"], samples["emagen_default"]);
            writer.WriteNumber("guard_on_over_off", Math.Round(guardOnOverOff, 3));
            writer.WriteNumber("rms_distance_over_default", Math.Round(rmsOverDefault, 3));
            log.WriteLine($"guard on / off (paired median) {guardOnOverOff:F3}; rms distance / default {rmsOverDefault:F3}");
            writer.WriteString("update_path", ema.UpdatePath);
            if (_dtype == ScalarType.BFloat16)
            {
                // The bf16 target: against a probe that moves what this update moves (2 + 4 read, 4 written).
                writer.WriteNumber("ratio_to_bf16_probe", Math.Round(PairedOver(samples["probe_bf16_widen"], samples["emagen_default"]), 3));
            }
            writer.WriteNumber("managed_bytes_per_update", managedPerUpdate);
            writer.WriteNumber("managed_bytes_per_update_all_threads", managedAllThreads);
            writer.WriteNumber("unpacked_managed_bytes_per_update", unpackedManaged);
            writer.WriteNumber("tensors_created_per_update", tensorsPerUpdate);
            writer.WriteNumber("bind_ms", Math.Round(bindMs, 2));
            writer.WriteNumber("bind_1000_params_ms", Math.Round(bind1000Ms, 2));
            writer.WriteEndObject();
        }
        foreach (var t in seedShadows.Concat(lerpShadows)) t.Dispose();
        return System.Text.Encoding.UTF8.GetString(stream.ToArray());
    }

    // Managed bytes one call allocates on any thread, over 20 calls after the warm-up.
    internal static double ManagedBytesPerCall(Action step)
    {
        long before = GC.GetTotalAllocatedBytes(precise: true);
        for (int i = 0; i < 20; i++) step();
        return (GC.GetTotalAllocatedBytes(precise: true) - before) / 20.0;
    }

    private double MeasureBind1000()
    {
        using var small = new SyntheticModel(1000 * 64, 1000, _dtype);
        var times = new List<double>();
        for (int i = 0; i < 5; i++)
        {
            var clock = Stopwatch.StartNew();
            using var ema = new EmaManager<SyntheticModel>(small, _decay);
            times.Add(clock.Elapsed.TotalMilliseconds);
        }
        return Timing.Median(times);
    }

    // Time of one variant over another's, per round, median over rounds.
    internal static double PairedOver(List<double> numerator, List<double> denominator) =>
        Timing.Median(numerator.Zip(denominator, (a, b) => a / b).ToList());

    // Bandwidth ratio per round (bytes per element of the variant vs the probe's 12), median over rounds.
    internal static double PairedRatio(List<double> variantMs, List<double> probeMs, int variantBytes) =>
        Timing.Median(variantMs.Zip(probeMs, (v, p) => (variantBytes / v) / (12.0 / p)).ToList());
}


using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text.Json;
using EmaGen;
using EmaGen.Benchmarks;
using TorchSharp;
using static TorchSharp.torch;

/// <summary>
/// One rank's update of a sharded EMA (`update --world-size W --rank R`): the rank's Shard(0) boxes of every
/// parameter, against the fastest in-place pass over the same number of elements (the probes and LibTorch's flat
/// lerp_), paired per round.
/// </summary>
internal sealed unsafe class ShardedUpdateBenchmark
{
    private readonly IReadOnlyList<long[]> _shapes;
    private readonly ScalarType _dtype;
    private readonly double _decay;
    private readonly int _rounds;
    private readonly int? _threads;
    private readonly int _worldSize;
    private readonly int _rank;

    public ShardedUpdateBenchmark(IReadOnlyList<long[]> shapes, ScalarType dtype, double decay, int rounds, int? threads, int worldSize, int rank)
    {
        _shapes = shapes;
        _dtype = dtype;
        _decay = decay;
        _rounds = rounds;
        _threads = threads;
        _worldSize = worldSize;
        _rank = rank;
    }

    private int BytesPerElement => _dtype == ScalarType.BFloat16 ? 10 : 12;

    public string Run(TextWriter log)
    {
        using var model = new SyntheticModel(_shapes, _dtype);
        if (_threads is { } fixedThreads) torch.set_num_threads(fixedThreads);
        using var ema = new ShardedEmaManager<SyntheticModel>(model, _rank, _worldSize, new EmaOptions { Decay = _decay, Threads = _threads });
        // The boxes' elements (ShadowBytes also counts the arena's alignment padding).
        long elements = ema.TrackedNames.Sum(n => ema[n].numel());
        int threads = ema.UpdateThreads;
        log.WriteLine($"rank {_rank} of {_worldSize}: {elements:N0} of {_shapes.Sum(s => s.Aggregate(1L, (a, b) => a * b)):N0} elements, {threads} threads");

        using var passes = new InPlacePasses(elements, _decay, threads);
        var variants = new List<(string Name, int Bytes, Action Step)>
        {
            ("emagen_sharded", BytesPerElement, () => ema.Update(model)),
            ("emagen_sharded_after_libtorch_op", BytesPerElement, () => ema.Update(model)),
        };
        variants.AddRange(passes.Variants());
        // As in the dense benchmark: the update a trainer makes right after the optimizer's last LibTorch op.
        using var opInput = torch.ones(1 << 20);
        var before = new Dictionary<string, Action> { ["emagen_sharded_after_libtorch_op"] = () => { using var _ = torch.no_grad(); opInput.add_(1f); } };
        var samples = Timing.RoundRobin(variants.Select(v => (v.Name, v.Step)).ToList(), _rounds, before);

        long managed = GC.GetAllocatedBytesForCurrentThread();
        const int steps = 20;
        for (int i = 0; i < steps; i++) ema.Update(model);
        double managedPerUpdate = (double)(GC.GetAllocatedBytesForCurrentThread() - managed) / steps;

        var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteNumber("world_size", _worldSize);
            w.WriteNumber("rank", _rank);
            w.WriteNumber("shard_numel", elements);
            w.WriteString("dtype", _dtype == ScalarType.BFloat16 ? "bfloat16" : "float32");
            w.WriteNumber("threads", threads);
            w.WriteStartObject("variants");
            string limit = InPlacePasses.Limit(samples);
            double limitGBps = elements * 12.0 / (Timing.Median(samples[limit]) / 1000.0) / 1e9;
            foreach (var v in variants)
            {
                double ms = Timing.Median(samples[v.Name]);
                double gbps = elements * (double)v.Bytes / (ms / 1000.0) / 1e9;
                w.WriteStartObject(v.Name);
                w.WriteNumber("ms", Math.Round(ms, 3));
                w.WriteNumber("GBps", Math.Round(gbps, 1));
                w.WriteEndObject();
                log.WriteLine($"{v.Name,-26} {ms,9:F3} ms  {gbps,7:F1} GB/s");
            }
            w.WriteEndObject();
            w.WriteString("limit", limit);
            w.WriteNumber("limit_GBps", Math.Round(limitGBps, 1));
            w.WriteNumber("ratio_to_limit", Math.Round(UpdateBenchmark.PairedRatio(samples["emagen_sharded"], samples[limit], BytesPerElement), 3));
            w.WriteNumber("after_libtorch_op_ratio_to_limit", Math.Round(UpdateBenchmark.PairedRatio(samples["emagen_sharded_after_libtorch_op"], samples[limit], BytesPerElement), 3));
            w.WriteNumber("managed_bytes_per_update", managedPerUpdate);
            w.WriteEndObject();
        }
        return System.Text.Encoding.UTF8.GetString(stream.ToArray());
    }
}

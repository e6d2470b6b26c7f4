using System;
using System.Diagnostics;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text.Json;
using System.Text.Json.Serialization;
using TorchSharp;
using static TorchSharp.torch;

namespace EmaGen.Samples.Denoiser;

/// <summary>Settings of one training run (the command-line options of the sample).</summary>
public sealed record TrainOptions
{
    public int Steps { get; init; } = 4000;
    public double Decay { get; init; } = 0.995;
    public int Seed { get; init; } = 1;
    public string? OutDir { get; init; }
    public int BatchSize { get; init; } = 256;
    public double LearningRate { get; init; } = 2e-3;
    public int EvalPoints { get; init; } = 2000;
    public int LogEvery { get; init; } = 500;
    public bool ListParameters { get; init; }

    /// <summary>Ranks of a sharded EMA (1: the dense EmaManager). With more, this process is one rank (RANK/WORLD_SIZE).</summary>
    public int WorldSize { get; init; } = 1;

    /// <summary>LibTorch intra-op threads (null: LibTorch's default, or cores / world size for a rank). Float sums depend on it.</summary>
    public int? Threads { get; init; }

    /// <summary>A decay schedule (EmaScheduleParser syntax, e.g. "power:0.10"); null: constant <see cref="Decay"/>.</summary>
    public string? Schedule { get; init; }

    internal EmaOptions EmaOptions => new() { Decay = Decay, Schedule = Schedule is null ? null : EmaScheduleParser.Parse(Schedule) };
}

/// <summary>What a run measured. Distances are sliced Wasserstein-1 between generated and fresh true points (lower is better).</summary>
public sealed record TrainResult(
    int Steps,
    double FinalLoss,
    double Seconds,
    double StepsPerSecond,
    double RawDistance,
    double EmaDistance,
    double NoiseFloorDistance,
    int TrackedParameters,
    int ChangedParameters,
    double FirstUpdateMs);

/// <summary>Trains the DDPM noise predictor on two moons with AdamW, keeping an EMA of the weights with <see cref="EmaManager{TModel}"/>.</summary>
public static class Trainer
{
    private const int SlicedDirections = 256;

    public static TrainResult Run(TrainOptions options, TextWriter log)
    {
        if (options.Threads is { } threads) torch.set_num_threads(threads);
        torch.manual_seed(options.Seed);
        var random = new Random(options.Seed);
        using var diffusion = new Diffusion();
        using var model = new DenoiserModel();
        using var optimizer = torch.optim.AdamW(model.parameters(), lr: options.LearningRate, weight_decay: 1e-4);
        using var ema = new EmaManager<DenoiserModel>(model, options.EmaOptions);
        log.WriteLine($"model: {ema.Count} averaged tensors, {ema.ShadowBytes / 1024.0:F1} KiB of shadow; {ema.Schedule}; {options.Steps} steps of batch {options.BatchSize}");
        var initial = Snapshot(model, options, log);
        var (loss, seconds, firstUpdateMs) = Train(options, model, optimizer, diffusion, random, log, () => ema.Update(model));

        var (raw, averaged, floor) = Evaluate(options, model, diffusion, random, () => ema.SwapInto(model));
        int changed = CountChanged(initial, model, log);
        var result = new TrainResult(options.Steps, loss, seconds, options.Steps / seconds, raw, averaged, floor, ema.Count, changed, firstUpdateMs);
        Report(log, options, result, "");

        if (options.OutDir is { } dir)
        {
            Directory.CreateDirectory(dir);
            File.WriteAllText(Path.Combine(dir, "summary.json"), JsonSerializer.Serialize(result, SummaryJson.Default.TrainResult));
            var checkpoint = Path.Combine(dir, "ema");
            ema.Save(checkpoint);
            log.WriteLine($"wrote {checkpoint} (PyTorch DCP folder, keys ema.*) and summary.json");
            log.WriteLine($"reloaded the checkpoint: {VerifyReload(checkpoint, ema, options)} shadows match bit for bit");
        }
        return result;
    }

    /// <summary>
    /// One rank of a sharded-EMA run. Every rank trains the same seeded model (the weights a data-parallel job with
    /// synchronised gradients would hold; gradient synchronisation is the trainer's business, not EmaGen's) and keeps only
    /// its shard of the EMA; all ranks write one checkpoint together. Rank 0 then reads the N shards back into one dense
    /// manager (resharding N to 1) to report the EMA's quality. Returns null on ranks other than 0.
    /// </summary>
    public static TrainResult? RunSharded(TrainOptions options, RankInfo rank, TextWriter log)
    {
        var dir = options.OutDir ?? throw new ArgumentException("a sharded run needs --out");
        // N ranks share this machine's cores; more LibTorch threads than cores would only make them wait for each other.
        torch.set_num_threads(options.Threads ?? Math.Max(1, Environment.ProcessorCount / rank.WorldSize));
        torch.manual_seed(options.Seed);
        var random = new Random(options.Seed);
        using var diffusion = new Diffusion();
        using var model = new DenoiserModel();
        using var optimizer = torch.optim.AdamW(model.parameters(), lr: options.LearningRate, weight_decay: 1e-4);
        using var ema = new ShardedEmaManager<DenoiserModel>(model, rank.Rank, rank.WorldSize, options.EmaOptions);
        long denseBytes = model.parameters().Sum(p => p.numel() * 4);
        log.WriteLine($"rank {rank.Rank} of {rank.WorldSize}: {ema.ShadowBytes / 1024.0:F1} KiB of EMA shadow (dense: {denseBytes / 1024.0:F1} KiB); {ema.Schedule}; {options.Steps} steps of batch {options.BatchSize}");
        var initial = Snapshot(model, options, log);
        var (loss, seconds, firstUpdateMs) = Train(options, model, optimizer, diffusion, random, log, () => ema.Update(model));
        int changed = CountChanged(initial, model, log);

        var checkpoint = Path.Combine(dir, "ema");
        ema.Save(checkpoint, $"step{options.Steps}", TimeSpan.FromMinutes(5));
        if (rank.Rank != 0) return null;
        log.WriteLine($"wrote {checkpoint}: one PyTorch DCP checkpoint from {rank.WorldSize} ranks");

        using var consolidated = new EmaManager<DenoiserModel>(model, options.EmaOptions);
        consolidated.Load(checkpoint);
        var (raw, averaged, floor) = Evaluate(options, model, diffusion, random, () => consolidated.SwapInto(model));
        var result = new TrainResult(options.Steps, loss, seconds, options.Steps / seconds, raw, averaged, floor, ema.Count, changed, firstUpdateMs);
        Report(log, options, result, $"  (read back from {rank.WorldSize} shards)");
        return result;
    }

    // Samples from the raw weights and, swapped in, the EMA weights with the same initial and per-step noise, so the
    // difference is the weights alone; the noise floor is the distance between two independent true samples.
    private static (double Raw, double Averaged, double Floor) Evaluate(
        TrainOptions options, DenoiserModel model, Diffusion diffusion, Random random, Func<EmaWeightSwap> swapInEma)
    {
        using var noise = torch.randn(diffusion.Steps + 1, options.EvalPoints, 2);
        var truth = Points(TwoMoons.Sample(options.EvalPoints, random));
        var reference = Points(TwoMoons.Sample(options.EvalPoints, random));
        double raw = Score(diffusion.Sample(model, noise), truth, options.Seed);
        double averaged;
        using (swapInEma())
        {
            averaged = Score(diffusion.Sample(model, noise), truth, options.Seed);
        }
        return (raw, averaged, SlicedWasserstein.Distance(reference, truth, SlicedDirections, options.Seed));
    }

    private static void Report(TextWriter log, TrainOptions options, TrainResult result, string emaNote)
    {
        log.WriteLine($"trained {options.Steps} steps in {result.Seconds:F1} s ({result.StepsPerSecond:F0} steps/s)");
        log.WriteLine($"sample quality, sliced Wasserstein-1 to the true distribution ({options.EvalPoints} points, {SlicedDirections} directions; lower is better):");
        log.WriteLine($"  raw weights  {result.RawDistance:F4}");
        log.WriteLine($"  EMA weights  {result.EmaDistance:F4}{emaNote}");
        log.WriteLine($"  noise floor  {result.NoiseFloorDistance:F4}  (two independent true samples)");
    }

    // The training loop shared by the dense and the sharded run; afterUpdate runs after every optimizer step.
    private static (double Loss, double Seconds, double FirstUpdateMs) Train(
        TrainOptions options, DenoiserModel model, torch.optim.Optimizer optimizer, Diffusion diffusion, Random random, TextWriter log, Action afterUpdate)
    {
        var clock = Stopwatch.StartNew();
        var window = Stopwatch.StartNew();
        double loss = double.NaN;
        double firstUpdateMs = double.NaN;
        for (int step = 1; step <= options.Steps; step++)
        {
            using var scope = torch.NewDisposeScope();
            var x0 = TwoMoons.Sample(options.BatchSize, random);
            var t = torch.randint(0, diffusion.Steps, new long[] { options.BatchSize }, dtype: ScalarType.Int64);
            var eps = torch.randn(options.BatchSize, 2);
            var predicted = model.call(diffusion.Noise(x0, t, eps), t);
            var l = nn.functional.mse_loss(predicted, eps);
            optimizer.zero_grad();
            l.backward();
            optimizer.step();
            afterUpdate();
            if (step == 1)
            {
                firstUpdateMs = (DateTime.Now - Process.GetCurrentProcess().StartTime).TotalMilliseconds;
                log.WriteLine($"first EMA update {firstUpdateMs:F0} ms after process start");
            }
            if (step % options.LogEvery == 0 || step == options.Steps)
            {
                loss = l.item<float>();
                double rate = (step % options.LogEvery == 0 ? options.LogEvery : step % options.LogEvery) / window.Elapsed.TotalSeconds;
                log.WriteLine($"step {step,6}  loss {loss:F4}  {rate,7:F0} steps/s");
                window.Restart();
            }
        }
        return (loss, clock.Elapsed.TotalSeconds, firstUpdateMs);
    }

    // Kept to prove the optimizer moved the weights (under NativeAOT a module whose parameters were not registered trains nothing).
    private static List<(string Name, Tensor Value)> Snapshot(DenoiserModel model, TrainOptions options, TextWriter log)
    {
        if (options.ListParameters)
        {
            foreach (var (name, p) in model.named_parameters()) log.WriteLine($"parameter {name} [{string.Join(", ", p.shape)}]");
        }
        return model.named_parameters().Select(p => (p.name, p.parameter.detach().clone())).ToList();
    }

    private static int CountChanged(List<(string Name, Tensor Value)> initial, DenoiserModel model, TextWriter log)
    {
        int changed = 0;
        var final = model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var (name, before) in initial)
        {
            using var same = before.eq(final[name]).all();
            if (!same.item<bool>()) changed++;
            before.Dispose();
        }
        log.WriteLine($"optimizer changed {changed} of {initial.Count} parameter tensors");
        return changed;
    }

    // Loads the checkpoint into a fresh manager and compares every shadow with the live one.
    private static int VerifyReload(string checkpoint, EmaManager<DenoiserModel> ema, TrainOptions options)
    {
        using var model = new DenoiserModel();
        using var reloaded = new EmaManager<DenoiserModel>(model, options.EmaOptions);
        reloaded.Load(checkpoint);
        foreach (var name in ema.TrackedNames)
        {
            using var same = reloaded[name].eq(ema[name]).all();
            if (!same.item<bool>())
            {
                throw new InvalidDataException($"{checkpoint}: shadow '{name}' differs after reload");
            }
        }
        if (reloaded.Step != ema.Step) throw new InvalidDataException($"{checkpoint}: step {reloaded.Step} after reload, {ema.Step} before");
        return ema.Count;
    }

    private static double Score(Tensor generated, float[] truth, int seed)
    {
        using (generated) return SlicedWasserstein.Distance(Points(generated), truth, SlicedDirections, seed);
    }

    private static float[] Points(Tensor t)
    {
        using (t) return t.contiguous().data<float>().ToArray();
    }
}

[JsonSourceGenerationOptions(WriteIndented = true)]
[JsonSerializable(typeof(TrainResult))]
internal sealed partial class SummaryJson : JsonSerializerContext
{
}

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

    /// <summary>
    /// Several EMA profiles updated in one pass, as <c>NAME=SPEC</c> (e.g. <c>sigma050=power:0.05</c>); empty: one
    /// profile from <see cref="Schedule"/> or <see cref="Decay"/>.
    /// </summary>
    public IReadOnlyList<string> Profiles { get; init; } = [];

    /// <summary>Post-hoc EMA snapshots of the power-function profiles every this many steps (0: none); needs <see cref="OutDir"/>.</summary>
    public int PostHocEvery { get; init; }

    /// <summary>The σ_rel the post-hoc EMA is synthesised for at the last step, from the snapshots.</summary>
    public double PostHocSigmaRel { get; init; } = 0.075;

    /// <summary>Switch EMA: every this many steps the model is moved toward the first profile's EMA by <see cref="SwitchBlend"/> (null: never).</summary>
    public int? SwitchEvery { get; init; }

    public double SwitchBlend { get; init; } = 1.0;

    internal EmaOptions EmaOptions => Profiles.Count == 0
        ? new() { Decay = Decay, Schedule = Schedule is null ? null : EmaScheduleParser.Parse(Schedule), SwitchEvery = SwitchEvery, SwitchBlend = SwitchBlend }
        : new() { Profiles = Profiles.Select(ParseProfile).ToArray(), SwitchEvery = SwitchEvery, SwitchBlend = SwitchBlend };

    private static EmaProfileOptions ParseProfile(string text)
    {
        var equals = text.IndexOf('=');
        if (equals <= 0) throw new ArgumentException($"--profile '{text}': expected NAME=SPEC, e.g. sigma050=power:0.05");
        return new EmaProfileOptions(text[..equals], EmaScheduleParser.Parse(text[(equals + 1)..]));
    }
}

/// <summary>The quality of one set of EMA weights: a profile, or the post-hoc reconstruction.</summary>
public sealed record ProfileDistance(string Name, string Schedule, double Distance);

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
    double FirstUpdateMs)
{
    /// <summary>Every profile's distance (the first is <see cref="EmaDistance"/>), then the post-hoc EMA's when one was made.</summary>
    public IReadOnlyList<ProfileDistance> Profiles { get; init; } = [];
}

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
        log.WriteLine($"model: {ema.Count} averaged tensors, {ema.ShadowBytes / 1024.0:F1} KiB of shadow; {string.Join("; ", ema.Profiles)}; {options.Steps} steps of batch {options.BatchSize}");
        var postHocDir = PostHocDirectory(options);
        ClearPostHocSnapshots(options);
        var initial = Snapshot(model, options, log);
        var snapshots = new BackgroundSnapshots(options, postHocDir is null ? null : () => PostHocEma.SaveSnapshotAsync(ema, postHocDir));
        var (loss, seconds, firstUpdateMs) = Train(options, model, optimizer, diffusion, random, log, step =>
        {
            ema.Update(model);
            snapshots.After(step);
        });
        snapshots.Finish();

        using var postHoc = postHocDir is null ? null : SynthesizePostHoc(options, model, postHocDir, log);
        var (raw, profiles, floor) = Evaluate(options, model, diffusion, random, Candidates(options, ema, postHoc, model));
        int changed = CountChanged(initial, model, log);
        var result = new TrainResult(options.Steps, loss, seconds, options.Steps / seconds, raw, profiles[0].Distance, floor, ema.Count, changed, firstUpdateMs)
        {
            Profiles = profiles,
        };
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

    /// <summary>Deletes the post-hoc snapshots of an earlier run in the same output folder (before any rank starts).</summary>
    public static void ClearPostHocSnapshots(TrainOptions options)
    {
        if (PostHocDirectory(options) is { } dir && Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
    }

    private static string? PostHocDirectory(TrainOptions options) => options.PostHocEvery > 0
        ? Path.Combine(options.OutDir ?? throw new ArgumentException("post-hoc snapshots need --out"), "posthoc")
        : null;

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
        log.WriteLine($"rank {rank.Rank} of {rank.WorldSize}: {ema.ShadowBytes / 1024.0:F1} KiB of EMA shadow (dense: {denseBytes / 1024.0:F1} KiB per profile); {string.Join("; ", ema.Profiles)}; {options.Steps} steps of batch {options.BatchSize}");
        var initial = Snapshot(model, options, log);
        var postHocDir = PostHocDirectory(options);
        var snapshots = new BackgroundSnapshots(options, postHocDir is null ? null : () => PostHocEma.SaveSnapshotAsync(ema, postHocDir, TimeSpan.FromMinutes(5)));
        var (loss, seconds, firstUpdateMs) = Train(options, model, optimizer, diffusion, random, log, step =>
        {
            ema.Update(model);
            snapshots.After(step);
        });
        snapshots.Finish();
        int changed = CountChanged(initial, model, log);

        var checkpoint = Path.Combine(dir, "ema");
        ema.Save(checkpoint, $"step{options.Steps}", TimeSpan.FromMinutes(5));
        if (rank.Rank != 0) return null;
        log.WriteLine($"wrote {checkpoint}: one PyTorch DCP checkpoint from {rank.WorldSize} ranks");

        using var consolidated = new EmaManager<DenoiserModel>(model, options.EmaOptions);
        consolidated.Load(checkpoint);
        using var postHoc = postHocDir is null ? null : SynthesizePostHoc(options, model, postHocDir, log);
        var (raw, profiles, floor) = Evaluate(options, model, diffusion, random, Candidates(options, consolidated, postHoc, model));
        var result = new TrainResult(options.Steps, loss, seconds, options.Steps / seconds, raw, profiles[0].Distance, floor, ema.Count, changed, firstUpdateMs)
        {
            Profiles = profiles,
        };
        Report(log, options, result, $"  (read back from {rank.WorldSize} shards)");
        return result;
    }

    // Samples from the raw weights and, swapped in, each set of EMA weights with the same initial and per-step noise, so
    // the differences are the weights alone; the noise floor is the distance between two independent true samples.
    private static (double Raw, List<ProfileDistance> Profiles, double Floor) Evaluate(TrainOptions options, DenoiserModel model,
        Diffusion diffusion, Random random, IReadOnlyList<(string Name, string Schedule, Func<EmaWeightSwap> SwapIn)> candidates)
    {
        using var noise = torch.randn(diffusion.Steps + 1, options.EvalPoints, 2);
        var truth = Points(TwoMoons.Sample(options.EvalPoints, random));
        var reference = Points(TwoMoons.Sample(options.EvalPoints, random));
        double raw = Score(diffusion.Sample(model, noise), truth, options.Seed);
        var distances = new List<ProfileDistance>();
        foreach (var (name, schedule, swapIn) in candidates)
        {
            using (swapIn())
            {
                distances.Add(new ProfileDistance(name, schedule, Score(diffusion.Sample(model, noise), truth, options.Seed)));
            }
        }
        return (raw, distances, SlicedWasserstein.Distance(reference, truth, SlicedDirections, options.Seed));
    }

    // What the evaluation compares with the raw weights: every profile of `ema`, then the post-hoc EMA when there is one.
    private static List<(string Name, string Schedule, Func<EmaWeightSwap> SwapIn)> Candidates(
        TrainOptions options, EmaManager<DenoiserModel> ema, EmaManager<DenoiserModel>? postHoc, DenoiserModel model)
    {
        var candidates = ema.Profiles
            .Select(p => (p.Name.Length == 0 ? "EMA" : p.Name, p.Schedule.Describe(), (Func<EmaWeightSwap>)(() => p.SwapInto(model))))
            .ToList();
        if (postHoc is not null)
        {
            candidates.Add(($"post-hoc {options.PostHocSigmaRel}", postHoc.Schedule.Describe(), () => postHoc.SwapInto(model)));
        }
        return candidates;
    }

    // Post-hoc snapshots every PostHocEvery steps and at the last one, written in the background while training goes
    // on; each waits for the one before. With no snapshot folder it does nothing.
    private sealed class BackgroundSnapshots(TrainOptions options, Func<System.Threading.Tasks.Task<string>>? save)
    {
        private System.Threading.Tasks.Task<string>? _pending;

        public void After(int step)
        {
            if (save is null || (step % options.PostHocEvery != 0 && step != options.Steps)) return;
            Finish();
            _pending = save();
        }

        public void Finish() => _pending?.GetAwaiter().GetResult();
    }

    // The EMA of width PostHocSigmaRel at the last step, rebuilt from the snapshots and loaded into a manager of its own.
    // That manager binds to the trained model only for its layout (a fresh model would draw from the RNG and change the
    // evaluation noise); Load then replaces the copied weights.
    private static EmaManager<DenoiserModel> SynthesizePostHoc(TrainOptions options, DenoiserModel model, string snapshots, TextWriter log)
    {
        var output = Path.Combine(options.OutDir!, $"posthoc-ema-{options.PostHocSigmaRel.ToString(System.Globalization.CultureInfo.InvariantCulture)}");
        var result = PostHocEma.Synthesize(snapshots, options.PostHocSigmaRel, options.Steps, output);
        log.WriteLine($"post-hoc EMA: {result}; wrote {output}");
        var manager = new EmaManager<DenoiserModel>(model, new EmaOptions { Schedule = EmaSchedule.PowerFunction(options.PostHocSigmaRel) });
        manager.Load(output);
        return manager;
    }

    private static void Report(TextWriter log, TrainOptions options, TrainResult result, string emaNote)
    {
        log.WriteLine($"trained {options.Steps} steps in {result.Seconds:F1} s ({result.StepsPerSecond:F0} steps/s)");
        log.WriteLine($"sample quality, sliced Wasserstein-1 to the true distribution ({options.EvalPoints} points, {SlicedDirections} directions; lower is better):");
        log.WriteLine($"  raw weights  {result.RawDistance:F4}");
        if (result.Profiles.Count <= 1)
        {
            log.WriteLine($"  EMA weights  {result.EmaDistance:F4}{emaNote}");
        }
        else
        {
            foreach (var p in result.Profiles) log.WriteLine($"  EMA {p.Name,-22} {p.Distance:F4}  ({p.Schedule})");
        }
        log.WriteLine($"  noise floor  {result.NoiseFloorDistance:F4}  (two independent true samples)");
    }

    // The training loop shared by the dense and the sharded run; afterUpdate runs after every optimizer step.
    private static (double Loss, double Seconds, double FirstUpdateMs) Train(
        TrainOptions options, DenoiserModel model, torch.optim.Optimizer optimizer, Diffusion diffusion, Random random, TextWriter log, Action<int> afterUpdate)
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
            afterUpdate(step);
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
        foreach (var profile in ema.Profiles)
        {
            foreach (var name in ema.TrackedNames)
            {
                using var same = reloaded.Profiles[profile.Index][name].eq(profile[name]).all();
                if (!same.item<bool>())
                {
                    throw new InvalidDataException($"{checkpoint}: shadow '{name}' of profile '{profile.Name}' differs after reload");
                }
            }
        }
        if (reloaded.Step != ema.Step) throw new InvalidDataException($"{checkpoint}: step {reloaded.Step} after reload, {ema.Step} before");
        return ema.Count * ema.Profiles.Count;
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

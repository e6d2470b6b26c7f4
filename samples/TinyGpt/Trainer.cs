using System;
using System.Diagnostics;
using System.IO;
using System.Linq;
using TorchSharp;
using static TorchSharp.torch;

namespace EmaGen.Samples.TinyGpt;

/// <summary>Command-line options of the sample.</summary>
public sealed record TrainOptions
{
    public int Steps { get; init; } = 1500;
    public string Architecture { get; init; } = "gpt";
    public int Seed { get; init; } = 1;
    public int BatchSize { get; init; } = 32;
    /// <summary>A deliberately lively constant rate: the raw weights keep jittering around the optimum, the EMA does not.</summary>
    public double LearningRate { get; init; } = 3e-3;
    public string Schedule { get; init; } = "power:0.10";
    /// <summary>More EMA profiles beside the main one (named <c>ema</c> then), as <c>NAME=SPEC</c>: e.g. a BEMA profile <c>lagfree=startafter:200:bema</c>.</summary>
    public System.Collections.Generic.IReadOnlyList<string> Profiles { get; init; } = [];

    /// <summary>Switch EMA: every this many steps the model is moved toward the EMA by <see cref="SwitchBlend"/> (null: never).</summary>
    public int? SwitchEvery { get; init; }

    /// <summary>The Switch EMA blend in (0, 1]; 1 copies the EMA into the model.</summary>
    public double SwitchBlend { get; init; } = 1.0;
    public int? Threads { get; init; }
    public string? OutDir { get; init; }
    public bool ListParameters { get; init; }
    public bool TieEmbeddings { get; init; }
    public int PhraseLength { get; init; } = 12;
    public int Context => 2 * PhraseLength;
    public int ValidationBatches { get; init; } = 32;
    /// <summary>The step whose loss overflows (NanSpike); 0: none. With it, raw and EMA are evaluated along the run.</summary>
    public int NanSpike { get; init; }
    public int EvalEvery { get; init; }
}

/// <summary>The held-out losses at the end, and along the run when it had a spike.</summary>
public sealed record TrainResult(double Raw, double Ema, System.Collections.Generic.IReadOnlyList<EvalPoint> Curve)
{
    /// <summary>The held-out loss of each profile given with <see cref="TrainOptions.Profiles"/>, by name.</summary>
    public System.Collections.Generic.IReadOnlyList<(string Name, double Loss)> ProfileLosses { get; init; } = [];
}

/// <summary>Trains a language model with AdamW and an EMA, then compares raw and EMA weights on held-out text.</summary>
public static class Trainer
{
    public static TrainResult Run<TModel>(TrainOptions options, Func<TModel> create, TextWriter log)
        where TModel : nn.Module<Tensor, Tensor>, IEmaTracked<TModel>
    {
        if (options.Threads is int threads) torch.set_num_threads(threads);
        torch.manual_seed(options.Seed);
        var language = new SyntheticLanguage(options.PhraseLength, options.Seed);
        using var model = create();
        var schedule = EmaScheduleParser.Parse(options.Schedule);
        using var ema = new EmaManager<TModel>(model, EmaOptionsOf(options, schedule,
            r => log.WriteLine($"OnFirstNonFinite: the EMA kept its weights through step {r.Step}")));
        long parameters = model.parameters().Sum(p => p.numel());
        log.WriteLine($"TinyGpt ({options.Architecture}{(options.TieEmbeddings ? ", tied embeddings" : "")}): {parameters:N0} parameters in {ema.Parameters.Count} tensors, EMA {schedule.Describe()}");
        // A tied weight is one tensor of the model: named_parameters() lists it once, and the EMA keeps one shadow of it.
        log.WriteLine(FormattableString.Invariant($"EMA shadows: {ema.Count} tensors, {ema.ShadowBytes} bytes; tied aliases: {(ema.TiedAliases.Count == 0 ? "none" : string.Join(", ", ema.TiedAliases.Select(a => $"{a.Key} -> {a.Value}")))}"));
        if (options.ListParameters)
        {
            foreach (var p in ema.Parameters) log.WriteLine($"parameter {p.Name} [{string.Join(", ", p.Shape)}]");
            foreach (var (name, _) in model.named_parameters()) log.WriteLine($"named {name}");
        }

        optim.Optimizer NewOptimizer() => torch.optim.AdamW(model.parameters(), lr: options.LearningRate, weight_decay: 0.01);
        var optimizer = NewOptimizer();
        var random = new Random(options.Seed);
        int logEvery = Math.Max(1, options.Steps / 5);
        // A few held-out batches of their own for the curve of a spiked run (no dropout: evaluating draws no random numbers).
        var probe = options.NanSpike > 0 ? HeldOut(language, options.Seed + 2_000_003, 4) : [];
        int evalEvery = options.EvalEvery > 0 ? options.EvalEvery : Math.Max(1, options.Steps / 40);
        var curve = new System.Collections.Generic.List<EvalPoint>();
        var clock = Stopwatch.StartNew();
        for (int step = 1; step <= options.Steps; step++)
        {
            using var scope = torch.NewDisposeScope();
            var (inputs, targets, _) = language.Batch(options.BatchSize, random);
            optimizer.zero_grad();
            var loss = Loss(model, inputs, targets);
            if (step == options.NanSpike) loss = NanSpike.Overflow(loss);
            loss.backward();
            optimizer.step();
            ema.Update(model);
            if (ema.LastUpdate.Switched) log.WriteLine($"step {step,5}  Switch EMA: the model moved to its EMA (blend {options.SwitchBlend.ToString(System.Globalization.CultureInfo.InvariantCulture)})");
            if (probe.Count > 0 && (step % evalEvery == 0 || step == options.NanSpike || step == options.Steps)) curve.Add(Evaluate(ema, model, step, probe));
            if (step == options.NanSpike) optimizer = NanSpike.Recover(ema, model, optimizer, NewOptimizer, log);
            if (step % logEvery == 0 || step == options.Steps) log.WriteLine($"step {step,5}  train loss {loss.item<float>():F4}");
        }
        clock.Stop();
        log.WriteLine($"trained {options.Steps} steps in {clock.Elapsed.TotalSeconds:F1} s ({options.Steps / clock.Elapsed.TotalSeconds:F0} steps/s)");

        // Held-out text from its own generator, the same for both evaluations.
        optimizer.Dispose();
        var validation = new Random(options.Seed + 1_000_003);
        var held = Enumerable.Range(0, options.ValidationBatches).Select(_ => language.Batch(64, validation)).ToList();
        var batches = held.Select(b => (b.Inputs, b.Targets)).ToList();
        double floor = held.Average(b => b.TrueLoss);
        double raw = Validate(model, batches);
        double averaged;
        using (ema.SwapInto(model)) averaged = Validate(model, batches);
        log.WriteLine("held-out loss (nats/token)  perplexity");
        log.WriteLine($"  raw weights    {raw:F4}      {Math.Exp(raw):F4}");
        log.WriteLine($"  EMA weights    {averaged:F4}      {Math.Exp(averaged):F4}");
        // Every further profile through its own swap (a BEMA profile's: its bias-corrected weights).
        var profileLosses = new System.Collections.Generic.List<(string Name, double Loss)>();
        foreach (var profile in ema.Profiles.Skip(1))
        {
            double loss;
            using (profile.SwapInto(model)) loss = Validate(model, batches);
            profileLosses.Add((profile.Name, loss));
            log.WriteLine($"  {profile.Name,-14} {loss:F4}      {Math.Exp(loss):F4}  ({profile.Schedule.Describe()})");
        }
        log.WriteLine($"  the language   {floor:F4}      {Math.Exp(floor):F4}  (its own probabilities on this text: the floor)");
        log.WriteLine(FormattableString.Invariant($"exact raw={raw:R} ema={averaged:R}{string.Concat(profileLosses.Select(p => $" {p.Name}={p.Loss:R}"))}"));
        foreach (var (inputs, targets) in batches.Concat(probe))
        {
            inputs.Dispose();
            targets.Dispose();
        }
        if (options.NanSpike > 0)
        {
            var spiked = curve.First(p => p.Step == options.NanSpike);
            log.WriteLine(FormattableString.Invariant($"at the spike: raw loss {spiked.Raw:F4}, EMA loss {spiked.Ema:F4}; at the end: raw {curve[^1].Raw:F4}, EMA {curve[^1].Ema:F4}"));
        }

        if (options.OutDir is { } outDir)
        {
            var folder = Path.Combine(outDir, "ema");
            ema.Save(folder);
            using var fresh = create();
            using var reloaded = new EmaManager<TModel>(fresh, EmaOptionsOf(options, schedule));
            reloaded.Load(folder);
            int same = ema.TrackedNames.Count(n => ema[n].equal(reloaded[n]).all().item<bool>());
            log.WriteLine($"wrote {folder}; reloaded the checkpoint: {same} of {ema.Count} shadows match bit for bit");
            if (curve.Count > 0)
            {
                var plot = Path.Combine(outDir, "loss.svg");
                File.WriteAllText(plot, SvgPlot.Render(curve, options.NanSpike, $"TinyGpt held-out loss, raw vs EMA ({schedule.Describe()})"));
                log.WriteLine($"wrote {plot}");
            }
        }
        return new TrainResult(raw, averaged, curve) { ProfileLosses = profileLosses };
    }

    // One profile of the main schedule, or that one named "ema" and the --profile ones beside it, updated in one pass.
    private static EmaOptions EmaOptionsOf(TrainOptions options, EmaSchedule schedule, Action<EmaStepReport>? onFirstNonFinite = null) =>
        options.Profiles.Count == 0
            ? new EmaOptions { Schedule = schedule, OnFirstNonFinite = onFirstNonFinite, SwitchEvery = options.SwitchEvery, SwitchBlend = options.SwitchBlend }
            : new EmaOptions { Profiles = [new EmaProfileOptions("ema", schedule), .. options.Profiles.Select(ParseProfile)], OnFirstNonFinite = onFirstNonFinite, SwitchEvery = options.SwitchEvery, SwitchBlend = options.SwitchBlend };

    /// <summary>A <c>--profile NAME=SPEC</c> argument.</summary>
    public static EmaProfileOptions ParseProfile(string text)
    {
        int equals = text.IndexOf('=');
        if (equals <= 0) throw new ArgumentException($"--profile '{text}': expected NAME=SPEC, e.g. lagfree=startafter:200:bema");
        return new EmaProfileOptions(text[..equals], EmaScheduleParser.Parse(text[(equals + 1)..]));
    }

    private static System.Collections.Generic.List<(Tensor Inputs, Tensor Targets)> HeldOut(SyntheticLanguage language, int seed, int count)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, count).Select(_ => language.Batch(64, random)).Select(b => (b.Inputs, b.Targets)).ToList();
    }

    // Raw weights as they are (NaN when broken), then the EMA's swapped in.
    private static EvalPoint Evaluate<TModel>(EmaManager<TModel> ema, TModel model, int step, System.Collections.Generic.List<(Tensor Inputs, Tensor Targets)> probe)
        where TModel : nn.Module<Tensor, Tensor>, IEmaTracked<TModel>
    {
        double raw = Validate(model, probe);
        using (ema.SwapInto(model)) return new EvalPoint(step, raw, Validate(model, probe));
    }

    private static Tensor Loss(nn.Module<Tensor, Tensor> model, Tensor inputs, Tensor targets)
    {
        var logits = model.call(inputs);
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[^1]), targets.reshape(-1));
    }

    private static double Validate(nn.Module<Tensor, Tensor> model, System.Collections.Generic.List<(Tensor Inputs, Tensor Targets)> batches)
    {
        using var _ = torch.no_grad();
        double total = 0;
        foreach (var (inputs, targets) in batches)
        {
            using var scope = torch.NewDisposeScope();
            total += Loss(model, inputs, targets).item<float>();
        }
        return total / batches.Count;
    }
}

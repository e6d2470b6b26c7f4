using System;
using System.Globalization;
using System.IO;
using EmaGen;
using EmaGen.Samples.Denoiser;

// Usage: Denoiser --help
var options = new TrainOptions();
try
{
    for (int i = 0; i < args.Length; i++)
    {
        string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
        options = args[i] switch
        {
            "--steps" => options with { Steps = int.Parse(Value(), CultureInfo.InvariantCulture) },
            "--decay" => options with { Decay = double.Parse(Value(), CultureInfo.InvariantCulture) },
            "--seed" => options with { Seed = int.Parse(Value(), CultureInfo.InvariantCulture) },
            "--out" => options with { OutDir = Value() },
            "--batch" => options with { BatchSize = int.Parse(Value(), CultureInfo.InvariantCulture) },
            "--list-parameters" => options with { ListParameters = true },
            "--world-size" => options with { WorldSize = int.Parse(Value(), CultureInfo.InvariantCulture) },
            "--threads" => options with { Threads = int.Parse(Value(), CultureInfo.InvariantCulture) },
            "--schedule" => options with { Schedule = Value() },
            "--profile" => options with { Profiles = [.. options.Profiles, Value()] },
            "--switch-every" => options with { SwitchEvery = int.Parse(Value(), CultureInfo.InvariantCulture) },
            "--switch-blend" => options with { SwitchBlend = double.Parse(Value(), CultureInfo.InvariantCulture) },
            "--posthoc-every" => options with { PostHocEvery = int.Parse(Value(), CultureInfo.InvariantCulture) },
            "--posthoc-sigma" => options with { PostHocSigmaRel = double.Parse(Value(), CultureInfo.InvariantCulture) },
            "--help" or "-h" => throw new OperationCanceledException(),
            _ => throw new ArgumentException($"unknown option '{args[i]}'"),
        };
    }
    if (options.Steps < 1) throw new ArgumentException("--steps must be at least 1");
    if (options.WorldSize < 1) throw new ArgumentException("--world-size must be at least 1");
    _ = options.EmaOptions; // a bad --schedule or --profile fails here, with the accepted forms in the message
    if (options.PostHocEvery > 0 && options.OutDir is null) throw new ArgumentException("--posthoc-every needs --out (the snapshots go to OUT/posthoc)");
    options = options with { LogEvery = Math.Max(1, Math.Min(options.LogEvery, options.Steps / 5)) };
}
catch (Exception e) when (e is ArgumentException or FormatException or OperationCanceledException)
{
    if (e is not OperationCanceledException) Console.Error.WriteLine(e.Message);
    Console.Error.WriteLine("usage: Denoiser [--steps N] [--decay D] [--seed S] [--batch B] [--out DIR] [--list-parameters] [--world-size N] [--threads T] [--schedule SPEC] [--profile NAME=SPEC]... [--switch-every K [--switch-blend B]] [--posthoc-every N [--posthoc-sigma S]]");
    Console.Error.WriteLine("  --world-size N  run N local rank processes with a sharded EMA (each keeps 1/N of it; they write one checkpoint).");
    Console.Error.WriteLine("                  Every rank trains the same seeded model, the weights a data-parallel job with synchronised");
    Console.Error.WriteLine("                  gradients would hold: gradient synchronisation is the trainer's business, not EmaGen's.");
    Console.Error.WriteLine("  --schedule S    decay schedule instead of --decay: constant:D, warmup[:...], halflife:H, power:SIGMA_REL, bema[:kappa=..,eta=..,rho=..,gamma=..,betamin=..],");
    Console.Error.WriteLine("                  every:K[:percall]:S, startafter:N:S");
    Console.Error.WriteLine("  --profile N=S   one more EMA profile (repeatable), all updated in one pass; e.g. --profile sigma050=power:0.05 --profile sigma100=power:0.10;");
    Console.Error.WriteLine("                  a BEMA profile (--profile lagfree=startafter:100:bema) is evaluated with its bias-corrected weights");
    Console.Error.WriteLine("  --switch-every K  Switch EMA: every K steps the model is moved to the (first profile's) EMA by --switch-blend (default 1: copied); dense only");
    Console.Error.WriteLine("  --posthoc-every N  fp16 snapshots of the power-function profiles every N steps into OUT/posthoc, then the post-hoc");
    Console.Error.WriteLine("                  EMA of --posthoc-sigma (default 0.075) at the last step is synthesised and evaluated too");
    Console.Error.WriteLine("  --threads T     LibTorch threads (default: LibTorch's, or cores / N per rank); equal T gives bit-equal runs.");
    return e is OperationCanceledException ? 0 : 2;
}

if (options.WorldSize > 1)
{
    options = options with { OutDir = options.OutDir ?? Path.Combine("runs", $"w{options.WorldSize}") };
    if (Environment.GetEnvironmentVariable("RANK") is null)
    {
        // Snapshots of an earlier run must not mix into this one's post-hoc EMA; only the launcher may delete them.
        Trainer.ClearPostHocSnapshots(options);
        return Launcher.Run(args, options.WorldSize);
    }
    var rank = RankInfo.Resolve();
    if (rank.WorldSize != options.WorldSize) throw new InvalidOperationException($"WORLD_SIZE={rank.WorldSize} but --world-size {options.WorldSize}");
    Trainer.RunSharded(options, rank, rank.Rank == 0 ? Console.Out : TextWriter.Null);
    return 0;
}

Trainer.Run(options, Console.Out);
return 0;

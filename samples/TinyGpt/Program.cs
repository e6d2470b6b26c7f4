using System;
using System.Globalization;
using EmaGen.Samples.TinyGpt;

// Usage: TinyGpt --help
var options = new TrainOptions();
try
{
    for (int i = 0; i < args.Length; i++)
    {
        string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
        int Int() => int.Parse(Value(), CultureInfo.InvariantCulture);
        options = args[i] switch
        {
            "--steps" => options with { Steps = Int() },
            "--arch" => options with { Architecture = Architecture(Value()) },
            "--seed" => options with { Seed = Int() },
            "--batch" => options with { BatchSize = Int() },
            "--lr" => options with { LearningRate = double.Parse(Value(), CultureInfo.InvariantCulture) },
            "--schedule" => options with { Schedule = Value() },
            "--profile" => options with { Profiles = [.. options.Profiles, Value()] },
            "--threads" => options with { Threads = Int() },
            "--out" => options with { OutDir = Value() },
            "--list-parameters" => options with { ListParameters = true },
            "--tie-embeddings" => options with { TieEmbeddings = true },
            "--nan-spike" => options with { NanSpike = Int() },
            "--switch-every" => options with { SwitchEvery = Int() },
            "--switch-blend" => options with { SwitchBlend = double.Parse(Value(), CultureInfo.InvariantCulture) },
            "--help" or "-h" => throw new OperationCanceledException(),
            _ => throw new ArgumentException($"unknown option '{args[i]}'"),
        };
    }
    if (options.Steps < 1) throw new ArgumentException("--steps must be at least 1");
    if (options.NanSpike < 0 || options.NanSpike >= options.Steps) throw new ArgumentException("--nan-spike needs a step in [1, --steps)");
    _ = EmaGen.EmaScheduleParser.Parse(options.Schedule);
    foreach (var profile in options.Profiles) _ = Trainer.ParseProfile(profile);
}
catch (Exception e) when (e is ArgumentException or FormatException or OperationCanceledException)
{
    if (e is not OperationCanceledException) Console.Error.WriteLine(e.Message);
    Console.Error.WriteLine("usage: TinyGpt [--steps N] [--arch gpt|encoder] [--seed S] [--batch B] [--lr LR] [--schedule SPEC] [--profile NAME=SPEC]... [--threads T] [--out DIR] [--list-parameters] [--tie-embeddings] [--nan-spike STEP] [--switch-every K [--switch-blend B]]");
    Console.Error.WriteLine("  --arch gpt      own GPT blocks: MultiheadAttention + a Sequential MLP in a Module<Tensor, Tensor> field (default)");
    Console.Error.WriteLine("  --arch encoder  TorchSharp's TransformerEncoder with a causal mask");
    Console.Error.WriteLine("  --schedule S    EMA decay schedule (default power:0.10, EDM2's power function)");
    Console.Error.WriteLine("                  e.g. startafter:200:bema for BEMA, evaluated with its bias-corrected weights");
    Console.Error.WriteLine("  --profile N=S   one more EMA profile (repeatable) beside the main one (named ema then), all updated in one pass and");
    Console.Error.WriteLine("                  each evaluated; e.g. --profile lagfree=startafter:200:bema");
    Console.Error.WriteLine("  --threads T     LibTorch threads; equal T gives bit-equal runs (JIT and NativeAOT alike)");
    Console.Error.WriteLine("  --out DIR       save the EMA as a PyTorch DCP checkpoint in DIR/ema and check that it reloads bit for bit");
    Console.Error.WriteLine("  --tie-embeddings  the token embedding is the output head's weight (GPT-2 style): one parameter, one shadow");
    Console.Error.WriteLine("  --switch-every K  Switch EMA: every K steps the model is moved to the EMA by --switch-blend (default 1: copied)");
    Console.Error.WriteLine("  --nan-spike STEP  the loss of STEP overflows to infinity (NaN raw weights): the EMA stays intact, its step report is");
    Console.Error.WriteLine("                  printed, training resumes from the EMA weights; with --out also DIR/loss.svg (raw vs EMA over steps)");
    return e is OperationCanceledException ? 0 : 2;
}

if (options.Architecture == "encoder")
{
    Trainer.Run(options, () => new EncoderGptModel(SyntheticLanguage.Vocabulary, options.Context, tieEmbeddings: options.TieEmbeddings), Console.Out);
}
else
{
    Trainer.Run(options, () => new GptModel(SyntheticLanguage.Vocabulary, options.Context, tieEmbeddings: options.TieEmbeddings), Console.Out);
}
return 0;

static string Architecture(string value) => value is "gpt" or "encoder" ? value : throw new ArgumentException("--arch is gpt or encoder");

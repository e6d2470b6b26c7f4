using System;
using System.Globalization;
using EmaGen.Samples.Denoiser;

// Usage: Denoiser [--steps N] [--decay D] [--seed S] [--out DIR]
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
            "--help" or "-h" => throw new OperationCanceledException(),
            _ => throw new ArgumentException($"unknown option '{args[i]}'"),
        };
    }
    if (options.Steps < 1) throw new ArgumentException("--steps must be at least 1");
    options = options with { LogEvery = Math.Max(1, Math.Min(options.LogEvery, options.Steps / 5)) };
}
catch (Exception e) when (e is ArgumentException or FormatException or OperationCanceledException)
{
    if (e is not OperationCanceledException) Console.Error.WriteLine(e.Message);
    Console.Error.WriteLine("usage: Denoiser [--steps N] [--decay D] [--seed S] [--batch B] [--out DIR] [--list-parameters]");
    return e is OperationCanceledException ? 0 : 2;
}

Trainer.Run(options, Console.Out);
return 0;

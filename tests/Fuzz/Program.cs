using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;

namespace EmaGen.Fuzz;

/// <summary>
/// <c>dotnet run --project tests/Fuzz -- [--cases N] [--seed S] [--memory-mb M] [--timeout-s T] [--json] [--show K]</c>:
/// mutated-checkpoint fuzzing with counts per outcome class. <c>--kills N</c>: the SIGKILL campaign against saves.
/// <c>--amplification</c>: peak memory of the three memory-amplification inputs. <c>--full-disk N --on DIR</c>: saves
/// onto a file system that fills up part-way (<see cref="FullDiskCampaign"/>). Exit code 0 when no case is in a bad class.
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        if (args is ["--disk-save", var kind, var target, var value, var source])
        {
            return FullDiskCampaign.Save(kind, target, float.Parse(value, CultureInfo.InvariantCulture), source);
        }
        var options = Options.Parse(args);
        if (options.Worker) return Worker.Run(options);
        if (options.SaveLoop is { } dir) return KillCampaign.SaveLoop(dir, options.Start);
        if (options.Kills > 0) return KillCampaign.Run(options);
        if (options.Amplification) return Amplification.Run(options);
        if (options.FullDisk > 0) return FullDiskCampaign.Run(options);
        return Supervisor.Run(options);
    }
}

public sealed record Options
{
    public int Cases { get; init; } = 2000;
    public int Seed { get; init; } = 1;
    public long MemoryBudget { get; init; } = 512L << 20;
    public double TimeoutSeconds { get; init; } = 30;
    public bool Json { get; init; }
    public int Show { get; init; } = 10;
    public bool Worker { get; init; }
    public int From { get; init; }
    public string? Corpus { get; init; }
    public string? SaveLoop { get; init; }
    public long Start { get; init; } = 1;
    public int Kills { get; init; }
    public bool Amplification { get; init; }
    public int? Only { get; init; }
    public int FullDisk { get; init; }
    public string? On { get; init; }

    public static Options Parse(string[] args)
    {
        var o = new Options();
        for (int i = 0; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            o = args[i] switch
            {
                "--cases" => o with { Cases = int.Parse(Next(), CultureInfo.InvariantCulture) },
                "--seed" => o with { Seed = int.Parse(Next(), CultureInfo.InvariantCulture) },
                "--memory-mb" => o with { MemoryBudget = long.Parse(Next(), CultureInfo.InvariantCulture) << 20 },
                "--timeout-s" => o with { TimeoutSeconds = double.Parse(Next(), CultureInfo.InvariantCulture) },
                "--json" => o with { Json = true },
                "--show" => o with { Show = int.Parse(Next(), CultureInfo.InvariantCulture) },
                "--worker" => o with { Worker = true },
                "--from" => o with { From = int.Parse(Next(), CultureInfo.InvariantCulture) },
                "--corpus" => o with { Corpus = Next() },
                "--save-loop" => o with { SaveLoop = Next() },
                "--start" => o with { Start = long.Parse(Next(), CultureInfo.InvariantCulture) },
                "--kills" => o with { Kills = int.Parse(Next(), CultureInfo.InvariantCulture) },
                "--amplification" => o with { Amplification = true },
                "--only" => o with { Only = int.Parse(Next(), CultureInfo.InvariantCulture) },
                "--full-disk" => o with { FullDisk = int.Parse(Next(), CultureInfo.InvariantCulture) },
                "--on" => o with { On = Next() },
                _ => throw new ArgumentException($"unknown option {args[i]}"),
            };
        }
        return o;
    }

    /// <summary>The command line that starts this program again (as an apphost or through <c>dotnet</c>).</summary>
    public static (string File, List<string> Prefix) Self()
    {
        var process = Environment.ProcessPath!;
        var dll = typeof(Program).Assembly.Location;
        return Path.GetFileNameWithoutExtension(process) == "dotnet" ? (process, new List<string> { dll }) : (process, new List<string>());
    }
}

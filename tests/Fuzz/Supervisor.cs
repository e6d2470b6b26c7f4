using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Text.Json;

namespace EmaGen.Fuzz;

/// <summary>
/// Builds the corpus, runs the cases in worker processes (restarting after a crash or hang, which is recorded as the
/// case that was running), and prints the counts per outcome class and per mutation family.
/// </summary>
public static class Supervisor
{
    public static int Run(Options options)
    {
        var root = Path.Combine(Path.GetTempPath(), "emagen-fuzz-corpus-" + Guid.NewGuid().ToString("N")[..8]);
        var clock = Stopwatch.StartNew();
        try
        {
            var corpus = Corpus.Build(root);
            if (options.Only is { } only)
            {
                // One case, in this process, with its whole description: how a bad case from a report is looked at.
                using var runner = new CaseRunner(corpus, options.Seed, options.MemoryBudget, root);
                var (o, family, detail) = runner.Run(only);
                Console.WriteLine($"case {only} {o} {family} {detail}");
                return o >= Outcome.OtherException ? 1 : 0;
            }
            File.WriteAllText(Path.Combine(root, "corpus.json"), JsonSerializer.Serialize(corpus, CorpusJson.Default.ListCorpusEntry));
            var counts = Enum.GetValues<Outcome>().ToDictionary(o => o, _ => 0);
            var families = new SortedDictionary<string, Dictionary<Outcome, int>>(StringComparer.Ordinal);
            var corpora = new SortedDictionary<string, Dictionary<Outcome, int>>(StringComparer.Ordinal);
            var bad = new List<string>();
            int next = 0, workers = 0;
            while (next < options.Cases)
            {
                workers++;
                var (file, prefix) = Options.Self();
                var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
                foreach (var a in prefix.Concat(new[] { "--worker", "--corpus", root, "--seed", options.Seed.ToString(), "--from", next.ToString(),
                             "--cases", options.Cases.ToString(), "--memory-mb", (options.MemoryBudget >> 20).ToString(), "--timeout-s", options.TimeoutSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture) }))
                {
                    start.ArgumentList.Add(a);
                }
                using var process = Process.Start(start)!;
                var stderr = process.StandardError.ReadToEndAsync();
                string? line;
                while ((line = process.StandardOutput.ReadLine()) is not null)
                {
                    if (!line.StartsWith("case ", StringComparison.Ordinal)) continue;
                    var parts = line.Split(' ', 5);
                    int index = int.Parse(parts[1]);
                    var outcome = Enum.Parse<Outcome>(parts[2]);
                    Record(counts, families, parts[3], outcome);
                    var corpusName = parts.Length > 4 && parts[4].IndexOf(':') is > 0 and var colon ? parts[4][..colon] : "?";
                    Tally(corpora, corpusName, outcome);
                    if (outcome >= Outcome.OtherException) bad.Add($"case {index} {outcome} {parts[3]} {(parts.Length > 4 ? parts[4] : "")}");
                    next = index + 1;
                }
                process.WaitForExit();
                if (process.ExitCode != 0 && next < options.Cases && process.ExitCode != 3)
                {
                    // The worker died inside case `next` without reporting it: a crash.
                    Record(counts, families, "?", Outcome.CrashOrHang);
                    Tally(corpora, "?", Outcome.CrashOrHang);
                    bad.Add($"case {next} CrashOrHang (exit code {process.ExitCode}) {stderr.Result.Split('\n').FirstOrDefault()}");
                    next++;
                }
            }
            Report(options, counts, families, corpora, bad, clock.Elapsed, workers);
            return bad.Count == 0 ? 0 : 1;
        }
        finally
        {
            try { Directory.Delete(root, recursive: true); } catch (IOException) { }
        }
    }

    private static void Record(Dictionary<Outcome, int> counts, SortedDictionary<string, Dictionary<Outcome, int>> families, string family, Outcome outcome)
    {
        counts[outcome]++;
        Tally(families, family, outcome);
    }

    private static void Tally(SortedDictionary<string, Dictionary<Outcome, int>> table, string row, Outcome outcome)
    {
        if (!table.TryGetValue(row, out var f)) table[row] = f = Enum.GetValues<Outcome>().ToDictionary(o => o, _ => 0);
        f[outcome]++;
    }

    private static void Report(Options options, Dictionary<Outcome, int> counts, SortedDictionary<string, Dictionary<Outcome, int>> families,
        SortedDictionary<string, Dictionary<Outcome, int>> corpora, List<string> bad, TimeSpan elapsed, int workers)
    {
        int total = counts.Values.Sum();
        if (options.Json)
        {
            using var w = new Utf8JsonWriter(Console.OpenStandardOutput(), new JsonWriterOptions { Indented = true });
            w.WriteStartObject();
            w.WriteNumber("cases", total);
            w.WriteNumber("seed", options.Seed);
            w.WriteNumber("seconds", Math.Round(elapsed.TotalSeconds, 1));
            w.WriteNumber("worker_processes", workers);
            w.WriteStartObject("outcomes");
            foreach (var (o, n) in counts) w.WriteNumber(Name(o), n);
            w.WriteEndObject();
            foreach (var (title, table) in new[] { ("by_family", families), ("by_corpus", corpora) })
            {
                w.WriteStartObject(title);
                foreach (var (row, f) in table)
                {
                    w.WriteStartObject(row);
                    foreach (var (o, n) in f) if (n > 0) w.WriteNumber(Name(o), n);
                    w.WriteEndObject();
                }
                w.WriteEndObject();
            }
            w.WriteStartArray("bad_cases");
            foreach (var b in bad.Take(options.Show)) w.WriteStringValue(b);
            w.WriteEndArray();
            w.WriteEndObject();
            w.Flush();
            Console.WriteLine();
            return;
        }
        Console.WriteLine($"{total} cases, seed {options.Seed}, {elapsed.TotalSeconds:F1} s, {workers} worker process(es)");
        Console.WriteLine($"{"outcome",-24}{"cases",8}");
        foreach (var (o, n) in counts) Console.WriteLine($"{Name(o),-24}{n,8}");
        Console.WriteLine();
        var outcomes = Enum.GetValues<Outcome>();
        foreach (var (title, table) in new[] { ("family", families), ("corpus", corpora) })
        {
            Console.WriteLine($"{title,-24}" + string.Concat(outcomes.Select(o => $"{Short(o),11}")));
            foreach (var (row, f) in table) Console.WriteLine($"{row,-24}" + string.Concat(outcomes.Select(o => $"{f[o],11}")));
            Console.WriteLine();
        }
        foreach (var b in bad.Take(options.Show)) Console.WriteLine("BAD " + b);
    }

    private static string Name(Outcome o) => o switch
    {
        Outcome.Harmless => "harmless",
        Outcome.DocumentedException => "documented_exception",
        Outcome.OtherException => "other_exception",
        Outcome.CrashOrHang => "crash_or_hang",
        Outcome.OverMemoryBudget => "over_memory_budget",
        _ => "silent_value_change",
    };

    private static string Short(Outcome o) => o switch
    {
        Outcome.Harmless => "harmless",
        Outcome.DocumentedException => "documented",
        Outcome.OtherException => "other-exc",
        Outcome.CrashOrHang => "crash/hang",
        Outcome.OverMemoryBudget => "over-mem",
        _ => "silent",
    };
}

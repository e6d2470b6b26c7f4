using System;
using System.Diagnostics;
using System.Threading;

namespace EmaGen.Fuzz;

/// <summary>
/// Runs cases <c>--from</c> .. <c>--cases</c> − 1 against the corpus and prints one line per case:
/// <c>case INDEX OUTCOME FAMILY DETAIL</c>. A watchdog ends the process after a case runs past the time limit, so the
/// supervisor can record the hang and go on; a crash simply ends the process.
/// </summary>
public static class Worker
{
    private static long _caseStarted;
    private static int _current = -1;

    public static int Run(Options options)
    {
        var corpus = System.Text.Json.JsonSerializer.Deserialize(System.IO.File.ReadAllText(System.IO.Path.Combine(options.Corpus!, "corpus.json")), CorpusJson.Default.ListCorpusEntry)!;
        var scratch = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "emagen-fuzz-" + Environment.ProcessId);
        System.IO.Directory.CreateDirectory(scratch);
        var watchdog = new Thread(() =>
        {
            while (true)
            {
                Thread.Sleep(200);
                long started = Interlocked.Read(ref _caseStarted);
                if (started != 0 && Stopwatch.GetElapsedTime(started).TotalSeconds > options.TimeoutSeconds)
                {
                    Console.WriteLine($"case {_current} {Outcome.CrashOrHang} - ran past {options.TimeoutSeconds} s");
                    Console.Out.Flush();
                    Environment.Exit(3);
                }
            }
        }) { IsBackground = true };
        watchdog.Start();
        try
        {
            using var runner = new CaseRunner(corpus, options.Seed, options.MemoryBudget, scratch);
            for (int i = options.From; i < options.Cases; i++)
            {
                _current = i;
                Interlocked.Exchange(ref _caseStarted, Stopwatch.GetTimestamp());
                var (outcome, family, detail) = runner.Run(i);
                Interlocked.Exchange(ref _caseStarted, 0);
                Console.WriteLine($"case {i} {outcome} {family} {detail.ReplaceLineEndings(" ")}");
            }
            return 0;
        }
        finally
        {
            try { System.IO.Directory.Delete(scratch, recursive: true); } catch (System.IO.IOException) { }
        }
    }
}

[System.Text.Json.Serialization.JsonSerializable(typeof(System.Collections.Generic.List<CorpusEntry>))]
internal sealed partial class CorpusJson : System.Text.Json.Serialization.JsonSerializerContext
{
}

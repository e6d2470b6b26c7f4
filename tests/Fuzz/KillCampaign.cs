using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Threading;
using TorchSharp;

namespace EmaGen.Fuzz;

/// <summary>
/// SIGKILL during saves. A child process saves an EMA over and over (alternating <c>Save</c> and <c>SaveAsync</c>),
/// every state recognisable: after step k every shadow holds the value k. The parent kills it at a random moment, then
/// checks that the folder loads as one complete state no older than the last save the child reported, that
/// <c>emagen verify</c> passes, how many staging folders the kill left, and that the next save removes them.
/// </summary>
public static class KillCampaign
{
    public static int SaveLoop(string dir, long start)
    {
        using var model = new KillNet();
        using var ema = new EmaManager<KillNet>(model, new EmaOptions { Decay = 0.0 });
        for (long k = start; ; k++)
        {
            Fill(model, k);
            ema.Update(model);
            if (k % 2 == 0) ema.Save(dir);
            else ema.SaveAsync(dir).GetAwaiter().GetResult();
            Console.WriteLine($"saved {k}");
            Console.Out.Flush();
        }
    }

    private static void Fill(KillNet model, double value)
    {
        using (torch.no_grad())
        {
            foreach (var p in model.parameters()) p.fill_(value);
        }
    }

    public static int Run(Options options)
    {
        var root = Path.Combine(Path.GetTempPath(), "emagen-kills-" + Guid.NewGuid().ToString("N")[..8]);
        var dir = Path.Combine(root, "ckpt");
        Directory.CreateDirectory(root);
        var random = new Random(options.Seed);
        int complete = 0, verified = 0, stagingAfterKill = 0, stagingAfterNextSave = 0, killsWithStaging = 0;
        var problems = new List<string>();
        long next = 1;
        var clock = Stopwatch.StartNew();
        try
        {
            using var model = new KillNet();
            using var ema = new EmaManager<KillNet>(model, new EmaOptions { Decay = 0.0 });
            for (int kill = 0; kill < options.Kills; kill++)
            {
                var (file, prefix) = Options.Self();
                var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
                foreach (var a in prefix.Concat(new[] { "--save-loop", dir, "--start", next.ToString() })) start.ArgumentList.Add(a);
                using var child = Process.Start(start)!;
                long lastSaved = 0;
                var reader = new Thread(() =>
                {
                    string? line;
                    while ((line = child.StandardOutput.ReadLine()) is not null)
                    {
                        if (line.StartsWith("saved ", StringComparison.Ordinal)) Interlocked.Exchange(ref lastSaved, long.Parse(line[6..]));
                    }
                }) { IsBackground = true };
                reader.Start();
                // At least one save of this child's done (so its saves are in full swing), then a random moment.
                var wait = Stopwatch.StartNew();
                while (Interlocked.Read(ref lastSaved) == 0 && !child.HasExited && wait.Elapsed < TimeSpan.FromSeconds(120)) Thread.Sleep(5);
                if (child.HasExited) throw new InvalidOperationException("the save loop ended by itself: " + child.StandardError.ReadToEnd());
                Thread.Sleep(random.Next(0, 400));
                child.Kill();
                child.WaitForExit();
                reader.Join();
                long reported = Interlocked.Read(ref lastSaved);

                // The folder must hold one complete state, no older than the last save reported.
                int staging = Directory.GetDirectories(root, ".ckpt.saving-*").Length;
                stagingAfterKill += staging;
                if (staging > 0) killsWithStaging++;
                try
                {
                    ema.Load(dir);
                    // One state: every shadow holds the same value k, saved at the child's update k - next + 1.
                    var values = ema.TrackedNames.SelectMany(n => new[] { ema[n].min().ToSingle(), ema[n].max().ToSingle() }).Distinct().ToList();
                    if (values.Count == 1 && values[0] >= reported && values[0] < reported + 2 && ema.Step == (long)values[0] - next + 1) complete++;
                    else problems.Add($"kill {kill}: step {ema.Step}, values {string.Join(",", values.Take(4))}, last reported save {reported}");
                }
                catch (Exception e)
                {
                    problems.Add($"kill {kill}: the checkpoint does not load: {e.GetType().Name}: {e.Message}");
                }
                var output = new StringWriter();
                if (EmaGen.Cli.CliApp.Run(new[] { "verify", dir }, output, output) == 0) verified++;
                else problems.Add($"kill {kill}: verify failed: {output.ToString().Trim()}");

                // The next save (here, by this process) removes what the killed save left.
                ema.Save(dir);
                int left = StagingFolders(root);
                stagingAfterNextSave += left;
                if (left > 0) problems.Add($"kill {kill}: {left} staging folder(s) left after the next save");
                next = reported + 10;
            }
        }
        finally
        {
            try { Directory.Delete(root, recursive: true); } catch (IOException) { }
        }
        Console.WriteLine($"SIGKILL campaign: {options.Kills} kills in {clock.Elapsed.TotalSeconds:F1} s (seed {options.Seed})");
        Console.WriteLine($"{"kills",-34}{options.Kills,8}");
        Console.WriteLine($"{"complete states after the kill",-34}{complete,8}");
        Console.WriteLine($"{"emagen verify OK",-34}{verified,8}");
        Console.WriteLine($"{"kills that left staging",-34}{killsWithStaging,8}");
        Console.WriteLine($"{"staging folders left by kills",-34}{stagingAfterKill,8}");
        Console.WriteLine($"{"staging entries after next save",-34}{stagingAfterNextSave,8}");
        foreach (var p in problems) Console.WriteLine("PROBLEM " + p);
        return problems.Count == 0 ? 0 : 1;
    }

    // Staging folders and their lock files: everything beside the checkpoint.
    private static int StagingFolders(string root) => Directory.GetFileSystemEntries(root, ".ckpt.saving-*").Length;
}

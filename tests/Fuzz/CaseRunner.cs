using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using EmaGen.Dcp;

namespace EmaGen.Fuzz;

/// <summary>Runs cases in this process: copy a corpus folder, mutate it, read it, classify what happened.</summary>
public sealed class CaseRunner : IDisposable
{
    private readonly List<CorpusEntry> _corpus;
    private readonly Dictionary<string, Fingerprint> _oracle = new();
    private readonly CheckpointReading _reading = new();
    private readonly string _scratch;
    private readonly int _seed;
    private readonly long _memoryBudget;

    public CaseRunner(List<CorpusEntry> corpus, int seed, long memoryBudget, string scratch)
    {
        _corpus = corpus;
        _seed = seed;
        _memoryBudget = memoryBudget;
        _scratch = scratch;
        foreach (var entry in corpus)
        {
            _reading.LearnKeys(entry);
            _reading.Poison(entry.Read);
            _oracle[entry.Name] = _reading.Read(entry, Stage(entry, Path.Combine(scratch, "oracle-" + entry.Name)));
            if (entry.LaterSave is not null) _oracle[entry.Name + "/later"] = _reading.Read(entry, entry.LaterSave);
        }
    }

    /// <summary>Case <paramref name="index"/>: the same case for the same seed, whatever ran before it.</summary>
    public (Outcome Outcome, string Family, string Detail) Run(int index)
    {
        var random = new Random(unchecked(_seed * 1_000_003 + index));
        var entry = _corpus[random.Next(_corpus.Count)];
        var folder = Stage(entry, Path.Combine(_scratch, "case"));

        var family = Mutator.Families[random.Next(Mutator.Families.Length)];
        int mutations = random.NextDouble() < 0.7 ? 1 : random.Next(2, 4);
        var what = new List<string>();
        for (int m = 0; m < mutations; m++)
        {
            try
            {
                what.Add(Mutator.Apply(m == 0 ? family : Mutator.Families[random.Next(Mutator.Families.Length)], folder, entry, random));
            }
            catch (Exception e) when (e is CheckpointFormatException or IOException)
            {
                what.Add("(mutator skipped: " + e.GetType().Name + ")"); // an earlier mutation left nothing to parse or move
            }
        }
        // File operations can assemble the later save whole (its data files and its .metadata): a complete, valid
        // checkpoint of another state, which must read as exactly that state.
        var oracle = _oracle[entry.Name];
        if (entry.LaterSave is not null && SameFiles(folder, entry.LaterSave))
        {
            oracle = _oracle[entry.Name + "/later"];
            what.Add("(now identical to the later save)");
        }
        string detail = entry.Name + ": " + string.Join("; ", what);
        // The fingerprint reads every shadow, so a load's manager is resident before the baseline (docs/checkpoint-trust.md,
        // "Measuring memory"): the budget bounds what the read adds.
        Fingerprint? before = _reading.StateFor(entry.Read);
        GC.Collect();
        long baseline = Memory.ResetPeak();
        Outcome outcome;
        try
        {
            var result = _reading.Read(entry, folder);
            if (result.SameAs(oracle))
            {
                outcome = Outcome.Harmless;
            }
            else
            {
                outcome = Outcome.SilentValueChange;
                detail += " | differs at " + result.FirstDifference(oracle);
            }
            _reading.Poison(entry.Read);
        }
        catch (Exception e) when (e is CheckpointFormatException || (e is ArgumentException && entry.Read != ReadKind.DcpRead))
        {
            outcome = Outcome.DocumentedException;
            detail += " | " + e.GetType().Name + ": " + First(e.Message);
            if (before is not null && !before.SameAs(_reading.StateFor(entry.Read)!))
            {
                outcome = Outcome.SilentValueChange;
                detail += " | the failed load changed the shadows";
            }
        }
        catch (Exception e)
        {
            outcome = Outcome.OtherException;
            detail += " | " + e.GetType().FullName + ": " + First(e.Message) + " at " + First(e.StackTrace ?? "");
        }
        long peak = Memory.Peak() - baseline;
        if (peak > _memoryBudget)
        {
            outcome = Outcome.OverMemoryBudget;
            detail += $" | peak RSS +{peak / 1e6:F0} MB";
        }
        return (outcome, family, detail);
    }

    // A fresh copy of the entry's folder under `root` (for a post-hoc snapshot: the whole snapshots folder, so the
    // mutated snapshot keeps its name and its sibling); returns the folder to mutate.
    private static string Stage(CorpusEntry entry, string root)
    {
        if (Directory.Exists(root)) Directory.Delete(root, recursive: true);
        if (entry.Read != ReadKind.PostHocSynthesize)
        {
            Directory.CreateDirectory(root);
            foreach (var file in Directory.GetFiles(entry.Folder)) File.Copy(file, Path.Combine(root, Path.GetFileName(file)));
            return root;
        }
        var snapshots = Path.GetDirectoryName(entry.Folder)!;
        foreach (var snapshot in Directory.GetDirectories(snapshots))
        {
            var copy = Path.Combine(root, "snapshots", Path.GetFileName(snapshot));
            Directory.CreateDirectory(copy);
            foreach (var file in Directory.GetFiles(snapshot)) File.Copy(file, Path.Combine(copy, Path.GetFileName(file)));
        }
        return Path.Combine(root, "snapshots", Path.GetFileName(entry.Folder));
    }

    private static bool SameFiles(string a, string b)
    {
        var names = Directory.GetFileSystemEntries(a).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList();
        if (!names.SequenceEqual(Directory.GetFileSystemEntries(b).Select(Path.GetFileName).Order(StringComparer.Ordinal))) return false;
        return names.All(n => File.Exists(Path.Combine(a, n!)) && File.Exists(Path.Combine(b, n!))
            && File.ReadAllBytes(Path.Combine(a, n!)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(b, n!))));
    }

    private static string First(string text)
    {
        var line = text.Split('\n')[0].Trim();
        return line.Length > 300 ? line[..300] + "..." : line;
    }

    public void Dispose() => _reading.Dispose();
}

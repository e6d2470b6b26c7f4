using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Threading.Tasks;
using EmaGen.Dcp;
using TorchSharp;

namespace EmaGen.Fuzz;

/// <summary>How a case reads its (mutated) checkpoint: the way a trainer would.</summary>
public enum ReadKind
{
    /// <summary><c>EmaManager&lt;FuzzNet&gt;.Load</c>, strict, one unnamed profile.</summary>
    EmaLoad,
    /// <summary><c>EmaManager&lt;FuzzNet&gt;.Load</c> with two named profiles.</summary>
    EmaProfilesLoad,
    /// <summary><c>DcpReader</c>: every key the original holds, plus a box inside every multi-chunk tensor (the row-range path).</summary>
    DcpRead,
    /// <summary><c>ShardedEmaManager&lt;FuzzNet&gt;.Load</c> as rank 1 of 3: only the rows of its boxes, from any saved chunking.</summary>
    ShardedLoad,
    /// <summary>
    /// <c>PostHocEma.Synthesize</c> over a snapshots folder in which this entry's snapshot (one <c>step-*</c> folder)
    /// is the mutated one; the output checkpoint's tensors are the result.
    /// </summary>
    PostHocSynthesize,
}

/// <summary>
/// One checkpoint folder the fuzzer starts from. <paramref name="Sealed"/>: written by EmaGen (items carry save and key
/// seals); <paramref name="LaterSave"/>: a later save of the same model, whose files the file operations copy in.
/// </summary>
public sealed record CorpusEntry(string Name, string Folder, ReadKind Read, bool Sealed, string? LaterSave);

/// <summary>Builds the corpus: three EmaGen checkpoints (dense, two profiles, written by two ranks) and PyTorch 1.13's.</summary>
public static class Corpus
{
    public static EmaOptions ProfileOptions() => new()
    {
        Profiles = [new("fast", EmaSchedule.Constant(0.5)), new("slow", EmaSchedule.PowerFunction(0.10))],
    };

    public static List<CorpusEntry> Build(string root)
    {
        Directory.CreateDirectory(root);
        torch.manual_seed(1234);
        var list = new List<CorpusEntry>();
        using var model = new FuzzNet();

        using (var ema = new EmaManager<FuzzNet>(model, 0.9))
        {
            for (int i = 0; i < 3; i++) Train(model, ema.Update);
            ema.Save(Path.Combine(root, "emagen-dense"));
            Train(model, ema.Update);
            ema.Save(Path.Combine(root, "emagen-dense-later"));
        }
        list.Add(new("emagen-dense", Path.Combine(root, "emagen-dense"), ReadKind.EmaLoad, true, Path.Combine(root, "emagen-dense-later")));

        using (var ema = new EmaManager<FuzzNet>(model, ProfileOptions()))
        {
            for (int i = 0; i < 4; i++) Train(model, ema.Update);
            ema.Save(Path.Combine(root, "emagen-profiles"));
            Train(model, ema.Update);
            ema.Save(Path.Combine(root, "emagen-profiles-later"));
        }
        list.Add(new("emagen-profiles", Path.Combine(root, "emagen-profiles"), ReadKind.EmaProfilesLoad, true, Path.Combine(root, "emagen-profiles-later")));

        // Two ranks, each saving its Shard(0) boxes: a dense Load reads every tensor from two chunks.
        var sharded = Path.Combine(root, "emagen-sharded");
        Parallel.For(0, 2, new ParallelOptions { MaxDegreeOfParallelism = 2 }, rank =>
        {
            using var ema = new ShardedEmaManager<FuzzNet>(model, rank, 2, new EmaOptions { Decay = 0.9 });
            ema.Update(model);
            ema.Save(sharded, "fuzz0001", TimeSpan.FromSeconds(60));
        });
        list.Add(new("emagen-sharded", sharded, ReadKind.EmaLoad, true, null));

        // The dense checkpoint once more, read by one rank of a sharded manager (row ranges of single-chunk items).
        list.Add(new("emagen-dense-rank1of3", Path.Combine(root, "emagen-dense"), ReadKind.ShardedLoad, true, Path.Combine(root, "emagen-dense-later")));

        // Post-hoc snapshots of two power-function profiles at steps 2 and 4; the fuzzer mutates the second.
        var snapshots = Path.Combine(root, "posthoc", "snapshots");
        using (var ema = new EmaManager<FuzzNet>(model, new EmaOptions
               {
                   Profiles = [new("narrow", EmaSchedule.PowerFunction(0.05)), new("wide", EmaSchedule.PowerFunction(0.10))],
               }))
        {
            for (int step = 1; step <= 4; step++)
            {
                Train(model, ema.Update);
                if (step % 2 == 0) PostHocEma.SaveSnapshot(ema, snapshots);
            }
        }
        list.Add(new("emagen-posthoc", Directory.GetDirectories(snapshots).Order(StringComparer.Ordinal).Last(), ReadKind.PostHocSynthesize, true, null));

        var fixtures = Path.Combine(AppContext.BaseDirectory, "corpus", "torch113");
        foreach (var name in new[] { "single_file", "per_item", "sharded_2rank" })
        {
            var copy = Path.Combine(root, "torch113-" + name);
            Directory.CreateDirectory(copy);
            foreach (var file in Directory.GetFiles(Path.Combine(fixtures, name))) File.Copy(file, Path.Combine(copy, Path.GetFileName(file)));
            list.Add(new("torch113-" + name, copy, ReadKind.DcpRead, false, null));
        }
        return list;
    }

    private static void Train(FuzzNet model, Action<FuzzNet> update)
    {
        using (torch.no_grad())
        {
            foreach (var p in model.parameters()) p.add_(torch.randn_like(p).mul_(0.1));
        }
        update(model);
    }
}

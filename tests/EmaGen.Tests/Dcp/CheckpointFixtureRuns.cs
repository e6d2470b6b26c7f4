using System;
using System.Linq;
using System.Threading.Tasks;
using EmaGen.Tests.Models;
using TorchSharp;

namespace EmaGen.Tests.Dcp;

/// <summary>
/// The deterministic training runs behind the checked-in checkpoint fixtures (Fixtures/emagen-ema-1-*): the same code
/// wrote the fixtures with an earlier EmaGen, and the compatibility tests run it again with today's to compare.
/// </summary>
internal static class CheckpointFixtureRuns
{
    public static EmaProfileOptions[] Profiles() =>
    [
        new("fast", EmaSchedule.Constant(0.9)),
        new("power", EmaSchedule.PowerFunction(0.10)),
        new("every2", EmaSchedule.UpdateEvery(2, EmaSchedule.Constant(0.8))),
    ];

    /// <summary>A single-profile manager with a schedule: 4 updates.</summary>
    public static EmaManager<SizedModel> Single(SizedModel model)
    {
        var ema = new EmaManager<SizedModel>(model, new EmaOptions { Decay = 0.95, Schedule = EmaSchedule.PowerFunction(0.10) });
        Train(model, 4, step => ema.Update(model));
        return ema;
    }

    /// <summary>Three named profiles, one updating every second step: 5 updates.</summary>
    public static EmaManager<SizedModel> Named(SizedModel model)
    {
        var ema = new EmaManager<SizedModel>(model, new EmaOptions { Decay = 0.95, Profiles = Profiles() });
        Train(model, 5, step => ema.Update(model));
        return ema;
    }

    /// <summary>Two ranks of a sharded manager with the named profiles: 3 updates.</summary>
    public static ShardedEmaManager<SizedModel>[] Sharded(SizedModel model)
    {
        var ranks = Enumerable.Range(0, 2).Select(r => new ShardedEmaManager<SizedModel>(model, r, 2, new EmaOptions { Decay = 0.95, Profiles = Profiles() })).ToArray();
        Train(model, 3, step =>
        {
            foreach (var rank in ranks) rank.Update(model);
        });
        return ranks;
    }

    public static SizedModel Model(int seed)
    {
        torch.manual_seed(seed);
        return new SizedModel(torch.ScalarType.Float32, 6, 10, 1, 33);
    }

    /// <summary>Writes the three fixtures under <paramref name="root"/> (single, named, sharded).</summary>
    public static void WriteAll(string root)
    {
        using (var model = Model(61))
        using (var single = Single(model)) single.Save(System.IO.Path.Combine(root, "single"));
        using (var model = Model(62))
        using (var named = Named(model)) named.Save(System.IO.Path.Combine(root, "named"));
        using (var model = Model(63))
        {
            var ranks = Sharded(model);
            Task.WaitAll(ranks.Select(rank => Task.Run(() => rank.Save(System.IO.Path.Combine(root, "sharded"), "fixture", TimeSpan.FromSeconds(30)))).ToArray());
            foreach (var rank in ranks) rank.Dispose();
        }
    }

    /// <summary>A GPT-2 style tied model (seeded) for the tied-weights fixture.</summary>
    public static TiedGptModel TiedModel(int seed)
    {
        torch.manual_seed(seed);
        return new TiedGptModel();
    }

    /// <summary>
    /// A single-profile manager over a tied model: 3 updates. Written at commit 77f01c7, before tied weights had one
    /// shadow, it stored the tied Parameter under both names (<c>wte.weight</c> and <c>lm_head.weight</c>, equal).
    /// </summary>
    public static EmaManager<TiedGptModel> Tied(TiedGptModel model)
    {
        var ema = new EmaManager<TiedGptModel>(model, new EmaOptions { Decay = 0.9 });
        for (int step = 1; step <= 3; step++)
        {
            using (torch.no_grad())
            {
                foreach (var p in model.parameters()) p.add_(torch.randn(p.shape) * 0.1);
            }
            ema.Update(model);
        }
        return ema;
    }

    /// <summary>Writes the tied-weights fixture under <paramref name="root"/> (tied).</summary>
    public static void WriteTied(string root)
    {
        using var model = TiedModel(64);
        using var ema = Tied(model);
        ema.Save(System.IO.Path.Combine(root, "tied"));
    }

    // Parameters change by a seeded random step before every update, as an optimizer would move them.
    private static void Train(SizedModel model, int steps, Action<int> update)
    {
        for (int step = 1; step <= steps; step++)
        {
            using (torch.no_grad())
            {
                for (int i = 0; i < model.Count; i++) model[i].add_(torch.randn(model[i].shape) * 0.1);
            }
            update(step);
        }
    }
}

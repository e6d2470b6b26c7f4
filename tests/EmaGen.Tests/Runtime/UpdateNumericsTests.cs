using System;
using System.Collections.Generic;
using System.Linq;
using EmaGen.Tests.Models;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace EmaGen.Tests.Runtime;

/// <summary>Update arithmetic against a double-precision closed form, and the seed's edge cases.</summary>
public sealed class UpdateNumericsTests
{
    [Theory]
    [InlineData(0.9)]
    [InlineData(0.999)]
    [InlineData(0.5)]
    public void ShadowEqualsClosedFormAfterManyUpdates(double decay)
    {
        torch.manual_seed(7);
        using var model = new NestedModel(reflection: false);
        using var ema = new EmaManager<NestedModel>(model, decay);
        var expected = Snapshot(model).ToDictionary(kv => kv.Key, kv => kv.Value);

        const int steps = 25;
        for (int step = 0; step < steps; step++)
        {
            RandomizeParameters(model);
            ema.Update(model);
            foreach (var (name, value) in Snapshot(model))
            {
                var e = expected[name];
                for (int i = 0; i < e.Length; i++) e[i] = decay * e[i] + (1 - decay) * value[i];
            }
        }

        foreach (var name in ema.TrackedNames)
        {
            var actual = ema[name].data<float>().ToArray();
            var e = expected[name];
            Assert.Equal(e.Length, actual.Length);
            for (int i = 0; i < e.Length; i++)
            {
                Assert.True(Math.Abs(actual[i] - e[i]) <= 1e-5 + 1e-5 * Math.Abs(e[i]),
                    $"{name}[{i}]: {actual[i]} vs closed form {e[i]} (decay {decay})");
            }
        }
    }

    [Fact]
    public void DecayZeroTracksParametersExactly()
    {
        using var model = new NestedModel(reflection: false);
        using var ema = new EmaManager<NestedModel>(model, decay: 0.0);
        for (int step = 0; step < 3; step++)
        {
            RandomizeParameters(model);
            ema.Update(model);
            foreach (var (name, p) in model.named_parameters())
            {
                Assert.Equal(p.data<float>().ToArray(), ema[name].data<float>().ToArray());
            }
        }
    }

    [Fact]
    public void DecayOneNeverMoves()
    {
        using var model = new NestedModel(reflection: false);
        var initial = Snapshot(model).ToDictionary(kv => kv.Key, kv => kv.Value.Select(v => (float)v).ToArray());
        using var ema = new EmaManager<NestedModel>(model, decay: 1.0);
        for (int step = 0; step < 5; step++)
        {
            RandomizeParameters(model);
            ema.Update(model);
        }
        foreach (var name in ema.TrackedNames)
        {
            Assert.Equal(initial[name], ema[name].data<float>().ToArray());
        }
    }

    [Theory]
    [InlineData(-0.001)]
    [InlineData(1.0001)]
    [InlineData(double.NaN)]
    [InlineData(double.PositiveInfinity)]
    public void DecayOutsideUnitIntervalIsRejected(double decay)
    {
        using var model = new BareParameters(reflection: false);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new EmaManager<BareParameters>(model, decay));
        Assert.Contains("[0, 1]", e.Message);
        Assert.Equal("Decay", e.ParamName);
        Assert.Throws<ArgumentOutOfRangeException>(() => new EmaManager<BareParameters>(model, new EmaOptions { Decay = decay }));
    }

    [Fact]
    public void FrozenAndIgnoredParametersAreNotTrackedNorMoved()
    {
        using var model = new FrozenModel(reflection: false);
        using var ema = new EmaManager<FrozenModel>(model, 0.5);
        Assert.Equal(new[] { "trained", "backbone.bias", "head.weight", "head.bias" }, ema.TrackedNames);
        Assert.Equal(4, ema.Count);
        Assert.True(ema.Contains("trained"));
        Assert.False(ema.Contains("frozen"));
        Assert.False(ema.Contains("backbone.weight"));
        Assert.False(ema.Contains("probe"));
        Assert.False(ema.Contains("ignoredHead.weight"));
        Assert.Equal(EmaExclusion.Frozen, ema.Parameters.Single(p => p.Name == "frozen").Exclusion);
        Assert.Equal(EmaExclusion.Ignored, ema.Parameters.Single(p => p.Name == "ignoredHead.bias").Exclusion);
        Assert.Equal(ema.TrackedNames, ema.StateDict().Keys);
    }

    [Fact]
    public void UpdateRejectsAModelWhoseStructureChanged()
    {
        using var model = new ListModel(reflection: false);
        using var ema = new EmaManager<ListModel>(model, 0.5);
        var before = ema.TrackedNames.ToDictionary(n => n, n => ema[n].data<float>().ToArray());
        RandomizeParameters(model);
        model.Heads.Add(nn.Linear(4, 4));
        var e = Assert.Throws<InvalidOperationException>(() => ema.Update(model));
        Assert.Contains("'blocks.0.scale'", e.Message);
        Assert.Contains("module tree changed", e.Message);
        foreach (var (name, values) in before) Assert.Equal(values, ema[name].data<float>().ToArray());

        model.Heads.RemoveAt(3);
        ema.Update(model);
        Assert.NotEqual(before["heads.0.weight"], ema["heads.0.weight"].data<float>().ToArray());
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ReplacedParametersAreCheckedBeforeAnythingIsWrittenAndFollowedAfterwards(bool sharded)
    {
        using var model = new ListModel(reflection: false);
        using IDisposable manager = sharded
            ? new ShardedEmaManager<ListModel>(model, 0, 1, new EmaOptions { Decay = 0.5 })
            : new EmaManager<ListModel>(model, 0.5);
        Action update = sharded ? () => ((ShardedEmaManager<ListModel>)manager).Update(model) : () => ((EmaManager<ListModel>)manager).Update(model);
        Func<string, float[]> shadow = sharded
            ? n => ((ShardedEmaManager<ListModel>)manager)[n].data<float>().ToArray()
            : n => ((EmaManager<ListModel>)manager)[n].data<float>().ToArray();
        string[] names = { "heads.0.weight", "heads.2.weight", "blocks.1.scale" };
        update();
        var before = names.ToDictionary(n => n, shadow);

        // A valid replacement early in the walk and an invalid one after it: the step refuses, writing nothing.
        using var fresh = torch.full(2, 4, 3f);
        model.Heads[0].weight = new TorchSharp.Modules.Parameter(fresh.clone());
        model.Heads[2].weight = new TorchSharp.Modules.Parameter(torch.zeros(5, 4));
        var e = Assert.Throws<InvalidOperationException>(update);
        Assert.Contains("'heads.2.weight'", e.Message);
        foreach (var n in names) Assert.Equal(before[n], shadow(n));

        // Fix it (Linear's setter disposed the original): the next step averages both replacements.
        model.Heads[2].weight = new TorchSharp.Modules.Parameter(torch.full(1, 4, -2f));
        update();
        Assert.Equal(before["heads.0.weight"].Select(v => Lerp.Of(v, 3f, 0.5)), shadow("heads.0.weight"));
        Assert.Equal(before["heads.2.weight"].Select(v => Lerp.Of(v, -2f, 0.5)), shadow("heads.2.weight"));
        Assert.Equal(before["blocks.1.scale"], shadow("blocks.1.scale"));

        // The replacement is now the followed object: changing it in place moves the shadow again.
        using (torch.no_grad()) model.Heads[0].weight!.fill_(1f);
        var afterFirst = shadow("heads.0.weight");
        update();
        Assert.Equal(afterFirst.Select(v => Lerp.Of(v, 1f, 0.5)), shadow("heads.0.weight"));
    }

    [Fact]
    public void UpdateRecordsNoGradient()
    {
        using var model = new BareParameters(reflection: false);
        using var ema = new EmaManager<BareParameters>(model, 0.9);
        ema.Update(model);
        Assert.All(ema.TrackedNames, n => Assert.False(ema[n].requires_grad));
        Assert.True(torch.is_grad_enabled());
    }

    [Fact]
    public void DisposedManagerRefusesWork()
    {
        using var model = new BareParameters(reflection: false);
        var ema = new EmaManager<BareParameters>(model);
        ema.Dispose();
        ema.Dispose();
        Assert.Throws<ObjectDisposedException>(() => ema.Update(model));
        Assert.Throws<ObjectDisposedException>(() => ema.StateDict());
    }

    internal static void RandomizeParameters(nn.Module model)
    {
        using var _ = torch.no_grad();
        foreach (var (_, p) in model.named_parameters()) p.copy_(torch.randn_like(p));
    }

    private static IEnumerable<KeyValuePair<string, double[]>> Snapshot(nn.Module model) =>
        model.named_parameters().Select(p => KeyValuePair.Create(p.name, p.parameter.data<float>().ToArray().Select(v => (double)v).ToArray()));
}

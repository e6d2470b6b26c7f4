using System;
using System.Linq;
using EmaGen.Tests.Models;
using Xunit;

namespace EmaGen.Tests.Runtime;

/// <summary>The generated shadow tree: same names as the model, views into the manager's storage, clear errors for untracked slots.</summary>
public sealed class TypedShadowTests
{
    [Fact]
    public void ShadowMembersAreViewsOfTheManagersStorage()
    {
        using var model = new NestedModel(reflection: false);
        using var ema = new EmaManager<NestedModel>(model, 0.5);
        var shadow = ema.Shadow;
        Assert.Same(ema["middle.weight"], shadow.middle.weight);
        Assert.Same(ema["first.proj.bias"], shadow.first.proj.bias);
        Assert.Same(ema["second.scale"], shadow.second.scale);
        Assert.Same(ema["bias"], shadow.bias);

        UpdateNumericsTests.RandomizeParameters(model);
        var before = shadow.bias.data<float>().ToArray();
        ema.Update(model);
        Assert.NotEqual(before, shadow.bias.data<float>().ToArray());
    }

    [Fact]
    public void ArraysAndListsAreIndexable()
    {
        using var arrays = new ArrayModel(reflection: false, count: 4);
        using var ema = new EmaManager<ArrayModel>(arrays);
        Assert.Equal(4, ema.Shadow.blocks.Count);
        Assert.Same(ema["blocks.3.proj.weight"], ema.Shadow.blocks[3].proj.weight);

        using var lists = new ListModel(reflection: false);
        using var ema2 = new EmaManager<ListModel>(lists);
        Assert.Same(ema2["heads.2.bias"], ema2.Shadow.heads[2].bias);
        Assert.Same(ema2["blocks.1.scale"], ema2.Shadow.blocks[1].scale);
        Assert.False(ema2.Shadow.heads[1].Entry("bias").IsTracked);
    }

    [Fact]
    public void UntrackedSlotsExplainThemselves()
    {
        using var model = new FrozenModel(reflection: false);
        using var ema = new EmaManager<FrozenModel>(model);
        var frozen = Assert.Throws<InvalidOperationException>(() => ema.Shadow.frozen);
        Assert.Contains("'frozen'", frozen.Message);
        Assert.Contains("frozen", frozen.Message);
        var weight = Assert.Throws<InvalidOperationException>(() => ema.Shadow.backbone.weight);
        Assert.Contains("'backbone.weight'", weight.Message);
        Assert.Same(ema["backbone.bias"], ema.Shadow.backbone.bias);

        using var optional = new OptionalModel(reflection: false);
        using var ema2 = new EmaManager<OptionalModel>(optional);
        var missing = Assert.Throws<InvalidOperationException>(() => ema2.Shadow.missing);
        Assert.Contains("null", missing.Message);
        Assert.Null(ema2.Shadow.absentModule);
        Assert.Throws<InvalidOperationException>(() => ema2.Shadow.noBias.bias);
    }

    [Fact]
    public void CopyToWritesAveragedWeightsIntoAnotherInstance()
    {
        using var model = new NestedModel(reflection: false);
        using var ema = new EmaManager<NestedModel>(model, 0.7);
        UpdateNumericsTests.RandomizeParameters(model);
        ema.Update(model);
        using var target = new NestedModel(reflection: false);
        ema.CopyTo(target);
        foreach (var (name, p) in target.named_parameters())
        {
            Assert.Equal(ema[name].data<float>().ToArray(), p.data<float>().ToArray());
        }
    }

    [Fact]
    public void ShadowBytesCoverEveryTrackedElementWithAlignment()
    {
        using var model = new BuiltinsModel(reflection: false);
        using var ema = new EmaManager<BuiltinsModel>(model);
        long elements = ema.Parameters.Where(p => p.Tracked).Sum(p => p.Numel);
        Assert.True(ema.ShadowBytes >= elements * 4);
        Assert.Equal(0, ema.ShadowBytes % 64);
        Assert.True(ema.ShadowBytes < elements * 4 + ema.Count * 64);
    }
}

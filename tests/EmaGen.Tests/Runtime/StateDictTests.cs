using System;
using System.Collections.Generic;
using System.Linq;
using EmaGen.Tests.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace EmaGen.Tests.Runtime;

/// <summary>StateDict ownership and every way LoadStateDict can refuse, each leaving the shadows untouched.</summary>
public sealed class StateDictTests
{
    [Fact]
    public void StateDictReturnsCallerOwnedCopiesInParameterOrder()
    {
        using var model = new NestedModel(reflection: false);
        using var ema = new EmaManager<NestedModel>(model);
        var state = ema.StateDict();
        Assert.Equal(model.named_parameters().Select(p => p.name), state.Keys);
        var before = ema["middle.weight"].data<float>().ToArray();
        state["middle.weight"].add_(1.0f);
        Assert.Equal(before, ema["middle.weight"].data<float>().ToArray());
        foreach (var t in state.Values) t.Dispose();
        Assert.Equal(before, ema["middle.weight"].data<float>().ToArray());
    }

    [Fact]
    public void RoundTripRestoresShadows()
    {
        using var model = new NestedModel(reflection: false);
        using var ema = new EmaManager<NestedModel>(model, 0.5);
        var saved = ema.StateDict();
        UpdateNumericsTests.RandomizeParameters(model);
        ema.Update(model);
        Assert.NotEqual(saved["bias"].data<float>().ToArray(), ema["bias"].data<float>().ToArray());
        ema.LoadStateDict(saved);
        foreach (var (name, t) in saved) Assert.Equal(t.data<float>().ToArray(), ema[name].data<float>().ToArray());
    }

    [Fact]
    public void StrictRejectsMissingNamesSortedWithCountsAndChangesNothing()
    {
        using var model = new NestedModel(reflection: false);
        using var ema = new EmaManager<NestedModel>(model);
        var before = Capture(ema);
        var state = Scaled(ema, 3f);
        state.Remove("second.proj.bias");
        state.Remove("bias");
        var e = Assert.Throws<ArgumentException>(() => ema.LoadStateDict(state));
        Assert.Contains("2 missing (bias, second.proj.bias)", e.Message);
        Assert.DoesNotContain("unexpected", e.Message);
        AssertUnchanged(before, ema);
    }

    [Fact]
    public void StrictRejectsUnexpectedNamesAndShowsOnlyTheFirstFew()
    {
        using var model = new BareParameters(reflection: false);
        using var ema = new EmaManager<BareParameters>(model);
        var before = Capture(ema);
        var state = Scaled(ema, 2f);
        for (int i = 0; i < 8; i++) state[$"extra.{i}"] = torch.zeros(1);
        var e = Assert.Throws<ArgumentException>(() => ema.LoadStateDict(state));
        Assert.Contains("8 unexpected (extra.0, extra.1, extra.2, extra.3, extra.4, ... and 3 more)", e.Message);
        AssertUnchanged(before, ema);
    }

    [Fact]
    public void NonStrictIgnoresExtraAndKeepsMissing()
    {
        using var model = new BareParameters(reflection: false);
        using var ema = new EmaManager<BareParameters>(model);
        var before = Capture(ema);
        var state = new Dictionary<string, Tensor>
        {
            ["alpha"] = torch.full(3, 5f),
            ["not.a.parameter"] = torch.zeros(2),
        };
        ema.LoadStateDict(state, strict: false);
        Assert.Equal(new[] { 5f, 5f, 5f }, ema["alpha"].data<float>().ToArray());
        Assert.Equal(before["beta"], ema["beta"].data<float>().ToArray());
        Assert.Equal(before["gamma"], ema["gamma"].data<float>().ToArray());
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void ShapeMismatchNamesTheParameterAndChangesNothing(bool strict)
    {
        using var model = new BareParameters(reflection: false);
        using var ema = new EmaManager<BareParameters>(model);
        var before = Capture(ema);
        var state = Scaled(ema, 4f); // "alpha" sorts first and is valid: it must not be written either
        state["beta"] = torch.zeros(4);
        var e = Assert.Throws<ArgumentException>(() => ema.LoadStateDict(state, strict));
        Assert.Contains("'beta': shape [4], expected [2, 2]", e.Message);
        AssertUnchanged(before, ema);
    }

    [Fact]
    public void DtypeMismatchNamesTheParameterAndChangesNothing()
    {
        using var model = new BareParameters(reflection: false);
        using var ema = new EmaManager<BareParameters>(model);
        var before = Capture(ema);
        var state = Scaled(ema, 4f);
        state["gamma"] = torch.tensor(0.5, ScalarType.Float64);
        var e = Assert.Throws<ArgumentException>(() => ema.LoadStateDict(state));
        Assert.Contains("'gamma': dtype Float64, expected Float32", e.Message);
        AssertUnchanged(before, ema);
    }

    [Fact]
    public void NullTensorIsRejected()
    {
        using var model = new BareParameters(reflection: false);
        using var ema = new EmaManager<BareParameters>(model);
        var state = Scaled(ema, 1f);
        state["alpha"] = null!;
        var e = Assert.Throws<ArgumentException>(() => ema.LoadStateDict(state));
        Assert.Contains("'alpha': value is null", e.Message);
    }

    private static Dictionary<string, Tensor> Scaled(EmaManager<BareParameters> ema, float factor) =>
        ema.StateDict().ToDictionary(kv => kv.Key, kv => kv.Value.mul(factor));

    private static Dictionary<string, Tensor> Scaled(EmaManager<NestedModel> ema, float factor) =>
        ema.StateDict().ToDictionary(kv => kv.Key, kv => kv.Value.mul(factor));

    private static Dictionary<string, float[]> Capture<T>(EmaManager<T> ema) where T : nn.Module, IEmaTracked<T> =>
        ema.TrackedNames.ToDictionary(n => n, n => ema[n].data<float>().ToArray());

    private static void AssertUnchanged<T>(Dictionary<string, float[]> before, EmaManager<T> ema) where T : nn.Module, IEmaTracked<T>
    {
        foreach (var (name, values) in before) Assert.Equal(values, ema[name].data<float>().ToArray());
    }
}

using System;
using System.Collections.Generic;
using System.Linq;
using EmaGen.CompilerServices;
using EmaGen.Tests.Models;
using TorchSharp;
using Xunit;

namespace EmaGen.Tests.Runtime;

/// <summary>
/// The contract: the generated layout names every parameter exactly as TorchSharp's named_parameters() does, in the same
/// order, and the generated registration registers the same parameters and buffers as the reflection-based one.
/// </summary>
public sealed class NameContractTests
{
    [Fact]
    public void BareParameters() => AssertContract(r => new BareParameters(r), "alpha", "beta", "gamma");

    [Fact]
    public void NestedTrackedModules() => AssertContract(r => new NestedModel(r),
        "bias",
        "first.scale", "first.proj.weight", "first.proj.bias",
        "middle.weight", "middle.bias",
        "second.scale", "second.proj.weight", "second.proj.bias");

    [Fact]
    public void BuiltinModules() => AssertContract(r => new BuiltinsModel(r),
        "linear.weight", "linear.bias",
        "bilinear.weight", "bilinear.bias",
        "conv1.weight", "conv1.bias",
        "conv2.weight", "conv2.bias",
        "deconv.weight", "deconv.bias",
        "embedding.weight",
        "bag.weight",
        "layerNorm.weight", "layerNorm.bias",
        "groupNorm.weight", "groupNorm.bias",
        "batchNorm.weight", "batchNorm.bias",
        "instanceNorm.weight", "instanceNorm.bias",
        "prelu.weight",
        "rnn.weight_ih", "rnn.weight_hh", "rnn.bias_ih", "rnn.bias_hh",
        "lstm.weight_ih", "lstm.weight_hh", "lstm.bias_ih", "lstm.bias_hh",
        "gru.weight_ih", "gru.weight_hh", "gru.bias_ih", "gru.bias_hh");

    [Fact]
    public void ModuleLists() => AssertContract(r => new ListModel(r),
        "heads.0.weight", "heads.0.bias", "heads.1.weight", "heads.2.weight", "heads.2.bias",
        "blocks.0.scale", "blocks.0.proj.weight", "blocks.0.proj.bias",
        "blocks.1.scale", "blocks.1.proj.weight", "blocks.1.proj.bias");

    [Fact]
    public void ArraysOfModules() => AssertContract(r => new ArrayModel(r),
        "stem.weight", "stem.bias",
        "blocks.0.scale", "blocks.0.proj.weight", "blocks.0.proj.bias",
        "blocks.1.scale", "blocks.1.proj.weight", "blocks.1.proj.bias",
        "blocks.2.scale", "blocks.2.proj.weight", "blocks.2.proj.bias");

    [Fact]
    public void AbsentOptionalParameters() => AssertContract(r => new OptionalModel(r), "present", "noBias.weight");

    [Fact]
    public void FrozenAndIgnoredParametersKeepTheirNames() => AssertContract(r => new FrozenModel(r),
        "trained", "frozen", "probe",
        "backbone.weight", "backbone.bias",
        "ignoredHead.weight", "ignoredHead.bias",
        "head.weight", "head.bias");

    [Fact]
    public void BuffersFollowNamedBuffers()
    {
        using var model = new BuiltinsModel(reflection: false);
        using var ema = new EmaManager<BuiltinsModel>(model);
        Assert.Equal(new[] { "batchNorm.running_mean", "batchNorm.running_var", "batchNorm.num_batches_tracked" }, ema.Buffers.Select(b => b.Name));
        Assert.All(ema.Buffers, b => Assert.Equal(EmaExclusion.BufferNotTracked, b.Exclusion));

        using var nested = new NestedModel(reflection: false);
        using var ema2 = new EmaManager<NestedModel>(nested);
        Assert.Equal(new[] { "counter" }, ema2.Buffers.Select(b => b.Name));
    }

    [Fact]
    public void GeneratedRegistrationIsIdempotent()
    {
        using var model = new NestedModel(reflection: false);
        // A second call (TorchSharp also calls it when a parent registers the module) must not register twice.
        typeof(NestedModel).GetMethod("RegisterComponents", System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.NonPublic)!
            .Invoke(model, null);
        Assert.Equal(9, model.named_parameters().Count());
    }

    [Fact]
    public void GeneratedWalkVisitsEachMemberByKindInFieldOrder()
    {
        // Own parameters, then buffers, then submodules in field order: a tracked class through its own walk, a built-in
        // by its parameter names; the parameterless 'act' is not visited.
        using var model = new NestedModel(reflection: false);
        var visitor = new RecordingVisitor(new());
        NestedModel.VisitParameters(model, ref visitor);
        string[] inner = ["parameter scale", "enter proj", "parameter weight", "parameter bias", "exit"];
        Assert.Equal(
            ["parameter bias", "buffer counter", "enter first", .. inner, "exit", "enter middle", "parameter weight", "parameter bias", "exit", "enter second", .. inner, "exit"],
            visitor.Events);
    }

    private readonly record struct RecordingVisitor(List<string> Events) : IEmaParameterVisitor
    {
        public void EnterModule(string name, bool ignored) => Events.Add("enter " + name);
        public void EnterIndex(int index) => Events.Add("index " + index);
        public void DynamicModule(torch.nn.Module module, int shardDim) => Events.Add("dynamic");
        public void ExitModule() => Events.Add("exit");
        public void Parameter(string name, TorchSharp.Modules.Parameter? parameter, bool ignored, int shardDim) => Events.Add("parameter " + name);
        public void Buffer(string name, torch.Tensor? buffer, bool ignored) => Events.Add("buffer " + name);
    }

    internal static void AssertContract<TModel>(Func<bool, TModel> create, params string[] expected)
        where TModel : torch.nn.Module, IEmaTracked<TModel>
    {
        using var reflected = create(true);
        using var generated = create(false);
        var truth = reflected.named_parameters().Select(p => p.name).ToArray();
        // Long native-module lists are checked against the reflection truth only (plus spot checks by the caller).
        if (expected.Length > 0) Assert.Equal(expected, truth);
        Assert.Equal(truth, generated.named_parameters().Select(p => p.name));
        Assert.Equal(reflected.named_buffers().Select(b => b.name), generated.named_buffers().Select(b => b.name));

        using var ema = new EmaManager<TModel>(generated);
        Assert.Equal(truth, ema.Parameters.Select(p => p.Name));
        Assert.Equal(generated.named_buffers().Select(b => b.name), ema.Buffers.Select(b => b.Name));
        var shapes = generated.named_parameters().ToDictionary(p => p.name, p => p.parameter.shape);
        Assert.All(ema.Parameters, p => Assert.Equal(shapes[p.Name], p.Shape));
    }
}

using System;
using System.Collections.Generic;
using System.Linq;
using EmaGen.Tests.Models;
using EmaGen.Tests.Support;
using TorchSharp;
using TorchSharp.Modules;
using Xunit;
using static TorchSharp.torch;

namespace EmaGen.Tests.Runtime;

/// <summary>
/// Packing is the dense manager's default: parameters that own their storage are re-pointed into one flat buffer per
/// group; parameters that share storage (a trainer's own flat buffer) are left alone, tied weights pack as one; a later re-point
/// falls back to the per-tensor path, stays correct and is reported once.
/// </summary>
public sealed class DefaultPackingTests
{
    [Fact]
    public void ANewManagerPacksByDefaultAndTheShardedOneDoesNot()
    {
        using var model = new SizedModel(ScalarType.Float32, 5, 300, 7);
        using var ema = new EmaManager<SizedModel>(model);
        ema.Update(model);
        Assert.StartsWith("1 group(s), 1 packed; at the last update 1 packed group(s) ran as one pass each and 0 tensor(s) one by one", ema.UpdatePath);
        // The three parameters now live in one buffer, in order, 64-byte aligned.
        var pointers = Enumerable.Range(0, 3).Select(i => (long)NativeTensor.DataPointer(model[i])).ToArray();
        Assert.True(pointers[1] - pointers[0] == 64 && pointers[2] - pointers[1] == 1216, string.Join(", ", pointers));

        using var unpacked = new SizedModel(ScalarType.Float32, 5, 300, 7);
        using var off = new EmaManager<SizedModel>(unpacked, new EmaOptions { PackParameters = false });
        off.Update(unpacked);
        Assert.StartsWith("1 group(s), 0 packed; at the last update 0 packed group(s) ran as one pass each and 3 tensor(s) one by one", off.UpdatePath);

        // The sharded manager's default leaves the model's parameters where they are.
        using var shardedModel = new SizedModel(ScalarType.Float32, 8, 8);
        var before = Enumerable.Range(0, 2).Select(i => (long)NativeTensor.DataPointer(shardedModel[i])).ToArray();
        using var sharded = new ShardedEmaManager<SizedModel>(shardedModel, 0, 2);
        sharded.Update(shardedModel);
        Assert.Equal(before, Enumerable.Range(0, 2).Select(i => (long)NativeTensor.DataPointer(shardedModel[i])).ToArray());
        Assert.Contains(" 0 packed", sharded.UpdatePath);
        Assert.Throws<NotSupportedException>(() => new ShardedEmaManager<SizedModel>(unpacked, 0, 2, new EmaOptions { PackParameters = true }));
    }

    [Fact]
    public void ParametersThatShareStorageAreNotRepointed()
    {
        // A trainer that keeps its own flat parameter buffer (say for a fused optimizer): packing would cut the alias.
        using var model = new SizedModel(ScalarType.Float32, 4, 6);
        using var flat = torch.zeros(10);
        using (torch.no_grad())
        {
            model[0].set_(flat.narrow(0, 0, 4));
            model[1].set_(flat.narrow(0, 4, 6));
        }
        using var ema = new EmaManager<SizedModel>(model, 0.5);
        Assert.Contains("not packed: 'leaves.0.w' shares its storage", ema.UpdatePath);
        using (torch.no_grad()) flat.fill_(2f);
        Assert.Equal(Enumerable.Repeat(2f, 6), model[1].data<float>().ToArray());
        ema.Update(model);
        Assert.Equal(Enumerable.Repeat(1f, 6), ema["leaves.1.w"].data<float>().ToArray());
    }

    [Fact]
    public void TiedWeightsArePackedAsOneParameter()
    {
        // Two Parameter objects over one memory (TiedWeightsTests covers one object under two names): one shadow, and
        // packing re-points both objects, so the model stays tied.
        using var model = new TiedModel();
        using var ema = new EmaManager<TiedModel>(model, 0.5);
        Assert.StartsWith("1 group(s), 1 packed", ema.UpdatePath);
        Assert.Equal(NativeTensor.DataPointer(model.get_parameter("embed.weight")!), NativeTensor.DataPointer(model.get_parameter("head.weight")!));
    }

    [Fact]
    public void ARepointedParameterIsReportedOnceAndStaysCorrect()
    {
        torch.manual_seed(4);
        var messages = new List<string>();
        using var model = new SizedModel(ScalarType.Float32, 5, 40);
        using var ema = new EmaManager<SizedModel>(model, new EmaOptions { Decay = 0.5, OnSlowPath = messages.Add });
        var shadow = ema["leaves.1.w"].data<float>().ToArray();
        using (torch.no_grad()) model[1].set_(torch.full(40, 4f));
        ema.Update(model);
        ema.Update(model);
        var m = Assert.Single(messages);
        Assert.Contains("'leaves.1.w' no longer aliases its packed flat buffer", m);
        Assert.Contains("slow path: parameter 'leaves.1.w'", ema.UpdatePath);
        Assert.Contains("0 packed group(s) ran as one pass each and 2 tensor(s) one by one", ema.UpdatePath);
        var expected = shadow.Select(s => 0.25f * s + 0.75f * 4f).ToArray();
        var actual = ema["leaves.1.w"].data<float>().ToArray();
        for (int i = 0; i < 40; i++) Assert.Equal(expected[i], actual[i], 5);
    }

    [Fact]
    public void OnTheTorchOpBackendARepointedParameterIsFollowedToo()
    {
        // The TorchSharp-op backend (what a CUDA model runs; forced here on the CPU) blends a packed group as one flat
        // tensor. It checks the same data pointers, so a re-pointed parameter is averaged from its new data, not from
        // the stale flat buffer.
        torch.manual_seed(5);
        var messages = new List<string>();
        using var model = new SizedModel(ScalarType.Float32, 5, 40);
        using var ema = new EmaManager<SizedModel>(model, new EmaOptions { Decay = 0.5, OnSlowPath = messages.Add, ForceTorchOps = true });
        ema.Update(model);
        Assert.Contains("through TorchSharp ops: 1 packed group(s) and 0 tensor(s)", ema.UpdatePath);
        var shadow = ema["leaves.1.w"].data<float>().ToArray();
        using (torch.no_grad()) model[1].set_(torch.full(40, 4f));
        ema.Update(model);
        Assert.Contains("'leaves.1.w' no longer aliases its packed flat buffer", Assert.Single(messages));
        Assert.Contains("through TorchSharp ops: 0 packed group(s) and 2 tensor(s)", ema.UpdatePath);
        var actual = ema["leaves.1.w"].data<float>().ToArray();
        for (int i = 0; i < 40; i++) Assert.Equal(0.5f * shadow[i] + 0.5f * 4f, actual[i], 5);
    }

    [Fact]
    public void AGroupRunsWholeAgainOnceItsParameterAliasesThePackedBufferAgain()
    {
        // Which groups run whole is decided again only when a check finds a tensor or pointer changed: steady steps
        // reuse it, a re-point breaks the group, and pointing the parameter back home restores it.
        using var model = new SizedModel(ScalarType.Float32, 5, 40);
        using var ema = new EmaManager<SizedModel>(model, new EmaOptions { Decay = 0.5, OnSlowPath = _ => { } });
        using var home = model[1].detach();
        for (int step = 0; step < 3; step++) ema.Update(model);
        Assert.Contains("1 packed group(s) ran as one pass each and 0 tensor(s) one by one", ema.UpdatePath);
        using (torch.no_grad()) model[1].set_(torch.full(40, 4f));
        ema.Update(model);
        ema.Update(model);
        Assert.Contains("0 packed group(s) ran as one pass each and 2 tensor(s) one by one", ema.UpdatePath);
        var shadow = ema["leaves.1.w"].data<float>().ToArray();
        using (torch.no_grad())
        {
            model[1].set_(home);
            home.fill_(-2f);
        }
        ema.Update(model);
        Assert.Contains("1 packed group(s) ran as one pass each and 0 tensor(s) one by one", ema.UpdatePath);
        // The packed buffer is live again: its values, not the abandoned tensor's, are averaged.
        Assert.Equal(shadow.Select(v => Lerp.Of(v, -2f, 0.5)), ema["leaves.1.w"].data<float>().ToArray());
    }

    [Fact]
    public void ARepointToAnotherPlaceInThePackedBufferIsCaught()
    {
        // The same storage at another offset: only the TensorImpl's storage offset tells it apart, which the check reads
        // without a call into LibTorch. The parameter must be averaged from where it now points.
        torch.manual_seed(6);
        var messages = new List<string>();
        using var model = new SizedModel(ScalarType.Float32, 5, 40, 50);
        using var ema = new EmaManager<SizedModel>(model, new EmaOptions { Decay = 0.5, OnSlowPath = messages.Add });
        for (int step = 0; step < 3; step++) ema.Update(model);
        var shadow = ema["leaves.1.w"].data<float>().ToArray();
        using (torch.no_grad()) model[1].set_(model[2].narrow(0, 10, 40));
        var now = model[1].data<float>().ToArray();
        Assert.NotEqual(shadow, now);
        ema.Update(model);
        Assert.Contains("'leaves.1.w' no longer aliases its packed flat buffer", Assert.Single(messages));
        Assert.Equal(shadow.Zip(now, (e, p) => Lerp.Of(e, p, 0.5)), ema["leaves.1.w"].data<float>().ToArray());
    }

    [Theory]
    [InlineData(true, false)]
    [InlineData(true, true)]
    [InlineData(false, false)]
    public void AParameterRestridedInPlaceIsAveragedByItsElements(bool packed, bool torchOps)
    {
        // The same storage, offset, element count and dtype, so the same data pointer: only the strides differ (every
        // second element of the memory it starts at where the flat buffer has room, else its first element 40 times).
        // The update must average the tensor's own elements, not the 40 floats that follow its pointer: packed (the
        // check reads its fields; the raw kernels or, as on CUDA, a TorchSharp blend per packed group) or not (the
        // check calls LibTorch for its pointer).
        var messages = new List<string>();
        using var model = new SizedModel(ScalarType.Float32, 5, 40, 50);
        using var ema = new EmaManager<SizedModel>(model, new EmaOptions { Decay = 0.5, PackParameters = packed, ForceTorchOps = torchOps, OnSlowPath = messages.Add });
        for (int step = 0; step < 3; step++) ema.Update(model);
        var shadow = ema["leaves.1.w"].data<float>().ToArray();
        var pointer = NativeTensor.DataPointer(model[1]);
        using (torch.no_grad()) model[1].set_(model[1].detach().as_strided(new long[] { 40 }, new long[] { packed ? 2 : 0 }, model[1].storage_offset()));
        Assert.Equal(pointer, NativeTensor.DataPointer(model[1]));
        Assert.False(model[1].is_contiguous());
        var now = model[1].data<float>().ToArray();
        ema.Update(model);
        if (packed) Assert.Contains("'leaves.1.w' is no longer contiguous where packing put it", Assert.Single(messages));
        else Assert.Empty(messages);
        // A strided tensor takes the TorchSharp-op path (LibTorch's lerp_, which may fuse): within a rounding of the
        // blend. The 40 floats after the pointer would miss it by far more (every second one belongs to the tensor).
        var averaged = ema["leaves.1.w"].data<float>().ToArray();
        var expected = shadow.Zip(now, (e, p) => Lerp.Of(e, p, 0.5)).ToArray();
        for (int i = 0; i < expected.Length; i++) Assert.True(Math.Abs(averaged[i] - expected[i]) <= 1e-6f * Math.Max(1f, Math.Abs(expected[i])), $"element {i}: {averaged[i]} vs {expected[i]}");
    }

    [Theory]
    [InlineData(0, true)]
    [InlineData(20, true)]
    [InlineData(0, false)]
    [InlineData(20, false)]
    public void AParameterShrunkInPlaceThrowsBeforeAnythingIsWritten(long size, bool packed)
    {
        // Emptied (LibTorch then gives no data pointer) or shrunk at the same place (the pointer stays): storage, offset
        // and dtype are unchanged, the element count is not. The update must refuse it, writing nothing, whether the
        // check reads the tensor's fields (packed) or calls LibTorch for its pointer (unpacked).
        using var model = new SizedModel(ScalarType.Float32, 5, 40, 50);
        using var ema = new EmaManager<SizedModel>(model, new EmaOptions { Decay = 0.5, PackParameters = packed, OnSlowPath = _ => { } });
        for (int step = 0; step < 3; step++) ema.Update(model);
        var shadows = Enumerable.Range(0, 3).Select(i => ema[$"leaves.{i}.w"].data<float>().ToArray()).ToArray();
        using (torch.no_grad()) model[1].set_(model[1].detach().narrow(0, 0, size));
        var error = Assert.Throws<InvalidOperationException>(() => ema.Update(model));
        Assert.Contains($"'leaves.1.w' has {size} elements, but 40", error.Message);
        Assert.Equal(3, ema.Step);
        for (int i = 0; i < 3; i++) Assert.Equal(shadows[i], ema[$"leaves.{i}.w"].data<float>().ToArray());
    }

    [Fact]
    public void TheCheckReadsPlacementFieldsOnThisLibTorch()
    {
        // The layout the check reads is LibTorch 2.10's: if an upgrade moves it, the check falls back to a call per
        // tensor (still correct, slower), and this test says so.
        Assert.True(TensorImplFields.LayoutHolds);
        using var whole = torch.arange(100, dtype: ScalarType.Float32);
        using var view = whole.narrow(0, 3, 90);
        Assert.True(TensorImplFields.TryRead(view.Handle, NativeTensor.DataPointer(view), 90, ScalarType.Float32, out var fields));
        Assert.True(fields.Unchanged());
        Assert.False(TensorImplFields.TryRead(view.Handle, NativeTensor.DataPointer(whole), 90, ScalarType.Float32, out _));
        Assert.False(TensorImplFields.TryRead(view.Handle, NativeTensor.DataPointer(view), 89, ScalarType.Float32, out _));
        using (torch.no_grad()) view.set_(whole.narrow(0, 4, 90));
        Assert.False(fields.Unchanged());
        // A transpose in place: storage, offset, count and dtype stay; only the strides (and the contiguity flag) move.
        Assert.True(TensorImplFields.FlagsHold);
        using var matrix = torch.arange(16, dtype: ScalarType.Float32).reshape(4, 4);
        Assert.True(TensorImplFields.TryRead(matrix.Handle, NativeTensor.DataPointer(matrix), 16, ScalarType.Float32, out var square));
        using (torch.no_grad()) matrix.set_(matrix.detach().t());
        Assert.False(matrix.is_contiguous());
        Assert.False(square.Unchanged());
    }

    [Fact]
    public void AnEmptyParameterDoesNotKeepItsGroupOffTheOnePass()
    {
        // LibTorch gives an empty tensor no data pointer: it must not read as re-pointed out of the flat buffer.
        var messages = new List<string>();
        using var model = new SizedModel(ScalarType.Float32, 5, 0, 40);
        using var ema = new EmaManager<SizedModel>(model, new EmaOptions { Decay = 0.5, OnSlowPath = messages.Add });
        var shadow = ema["leaves.2.w"].data<float>().ToArray();
        using (torch.no_grad()) model[2].fill_(3f);
        ema.Update(model);
        Assert.Contains("1 packed group(s) ran as one pass each and 0 tensor(s) one by one", ema.UpdatePath);
        Assert.Empty(messages);
        Assert.Equal(shadow.Select(v => Lerp.Of(v, 3f, 0.5)), ema["leaves.2.w"].data<float>().ToArray());
    }
}

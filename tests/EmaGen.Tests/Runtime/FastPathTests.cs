using System;
using System.Collections.Generic;
using System.Linq;
using EmaGen.Tests.Models;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace EmaGen.Tests.Runtime;

/// <summary>
/// Every fast path against a straightforward reference: bitwise where the operation order is the same
/// (<c>fma(ema, d, p*w)</c> per element), otherwise within a few ulps of the torch per-tensor update.
/// </summary>
public sealed class FastPathTests
{
    private static readonly long[] OddSizes = { 1, 3, 63, 65, 1000, 4097 };

    [Theory]
    [InlineData(0.9)]
    [InlineData(0.999)]
    public void Float32MatchesTheScalarFormulaBitwiseAndTorchWithinUlps(double decay)
    {
        torch.manual_seed(1);
        using var model = new SizedModel(ScalarType.Float32, OddSizes);
        using var ema = new EmaManager<SizedModel>(model, decay);
        var before = Values(ema);
        UpdateNumericsTests.RandomizeParameters(model);
        ema.Update(model);

        float d = (float)decay, w = (float)(1 - decay);
        for (int i = 0; i < model.Count; i++)
        {
            var e0 = before[i];
            var p = model[i].data<float>().ToArray();
            var actual = ema[Name(i)].data<float>().ToArray();
            var expected = e0.Select((e, k) => Lerp.Of(e, p[k], decay)).ToArray();
            Assert.Equal(expected, actual);

            using var reference = torch.tensor(e0).mul_(decay).add_(model[i].detach(), alpha: 1 - decay);
            AssertClose(reference.data<float>().ToArray(), actual, e0, p, d, w, Name(i));
        }
    }

    [Fact]
    public void BFloat16ParametersGetFloat32ShadowsWidenedInRegisters()
    {
        torch.manual_seed(2);
        using var model = new SizedModel(ScalarType.BFloat16, OddSizes);
        using var ema = new EmaManager<SizedModel>(model, 0.99);
        Assert.All(ema.Parameters, p => Assert.Equal(ScalarType.Float32, p.ShadowDType));
        var before = Values(ema);
        UpdateNumericsTests.RandomizeParameters(model);
        ema.Update(model);

        for (int i = 0; i < model.Count; i++)
        {
            using var wide = model[i].detach().to_type(ScalarType.Float32);
            var p = wide.data<float>().ToArray();
            var actual = ema[Name(i)].data<float>().ToArray();
            var expected = before[i].Select((e, k) => Lerp.Of(e, p[k], 0.99)).ToArray();
            Assert.Equal(expected, actual);

            using var reference = torch.tensor(before[i]).mul_(0.99).add_(model[i].detach(), alpha: 1 - 0.99);
            AssertClose(reference.data<float>().ToArray(), actual, before[i], p, 0.99f, 0.01f, Name(i));
        }
        Assert.All(ema.StateDict().Values, t => Assert.Equal(ScalarType.Float32, t.dtype));
    }

    [Fact]
    public void Float16ParametersGetFloat32Shadows()
    {
        torch.manual_seed(3);
        using var model = new SizedModel(ScalarType.Float16, OddSizes);
        using var ema = new EmaManager<SizedModel>(model, 0.9);
        var before = Values(ema);
        UpdateNumericsTests.RandomizeParameters(model);
        ema.Update(model);
        for (int i = 0; i < model.Count; i++)
        {
            using var wide = model[i].detach().to_type(ScalarType.Float32);
            using var reference = torch.tensor(before[i]).mul_(0.9).add_(model[i].detach(), alpha: 1 - 0.9);
            AssertClose(reference.data<float>().ToArray(), ema[Name(i)].data<float>().ToArray(), before[i], wide.data<float>().ToArray(), 0.9f, 0.1f, Name(i));
        }
    }

    [Fact]
    public void LowPrecisionShadowRoundsToNearestEven()
    {
        torch.manual_seed(4);
        using var model = new SizedModel(ScalarType.BFloat16, OddSizes);
        using var ema = new EmaManager<SizedModel>(model, new EmaOptions { Decay = 0.75, LowPrecisionShadow = true });
        Assert.All(ema.Parameters, p => Assert.Equal(ScalarType.BFloat16, p.ShadowDType));
        var before = ema.TrackedNames.Select(n => ema[n].to_type(ScalarType.Float32).data<float>().ToArray()).ToArray();
        UpdateNumericsTests.RandomizeParameters(model);
        ema.Update(model);
        for (int i = 0; i < model.Count; i++)
        {
            using var wide = model[i].detach().to_type(ScalarType.Float32);
            var p = wide.data<float>().ToArray();
            var exact = before[i].Select((e, k) => Lerp.Of(e, p[k], 0.75)).ToArray();
            // LibTorch's own fp32 -> bf16 conversion is the reference for the rounding.
            using var rounded = torch.tensor(exact).to_type(ScalarType.BFloat16).to_type(ScalarType.Float32);
            using var actual = ema[Name(i)].to_type(ScalarType.Float32);
            Assert.Equal(rounded.data<float>().ToArray(), actual.data<float>().ToArray());
        }
    }

    [Fact]
    public void PackingKeepsParameterObjectsAndMatchesUnpackedBitwise()
    {
        torch.manual_seed(5);
        using var plain = new SizedModel(ScalarType.Float32, OddSizes);
        using var packedModel = new SizedModel(ScalarType.Float32, OddSizes);
        CopyParameters(plain, packedModel);
        var objects = Enumerable.Range(0, packedModel.Count).Select(i => packedModel[i]).ToArray();
        var values = objects.Select(p => p.data<float>().ToArray()).ToArray();
        using var optimizer = torch.optim.SGD(packedModel.parameters(), 0.5);

        using var ema = new EmaManager<SizedModel>(plain, new EmaOptions { Decay = 0.8, PackParameters = false });
        using var packed = new EmaManager<SizedModel>(packedModel, new EmaOptions { Decay = 0.8, PackParameters = true });
        for (int i = 0; i < packedModel.Count; i++)
        {
            Assert.Same(objects[i], packedModel[i]);
            Assert.Equal(values[i], packedModel[i].data<float>().ToArray());
        }
        Assert.Equal(packedModel.named_parameters().Select(p => p.name), plain.named_parameters().Select(p => p.name));

        // An optimizer built before packing still writes the parameters the packed update reads.
        for (int step = 0; step < 3; step++)
        {
            foreach (var p in packedModel.parameters()) p.grad = torch.randn_like(p);
            optimizer.step();
            CopyParameters(packedModel, plain);
            ema.Update(plain);
            packed.Update(packedModel);
        }
        Assert.NotEqual(values[5], packedModel[5].data<float>().ToArray());
        foreach (var name in ema.TrackedNames)
        {
            Assert.Equal(ema[name].data<float>().ToArray(), packed[name].data<float>().ToArray());
        }
    }

    [Fact]
    public void RepointedPackedParameterFallsBackAndStaysCorrect()
    {
        torch.manual_seed(6);
        using var model = new SizedModel(ScalarType.Float32, OddSizes);
        using var ema = new EmaManager<SizedModel>(model, new EmaOptions { Decay = 0.5, PackParameters = true });
        var before = Values(ema);
        using (torch.no_grad())
        {
            model[2].set_(torch.full(63, 3f));
        }
        ema.Update(model);
        Assert.Equal(before[2].Select(e => Lerp.Of(e, 3f, 0.5)).ToArray(), ema[Name(2)].data<float>().ToArray());
        var p0 = model[0].data<float>().ToArray();
        Assert.Equal(before[0].Select((e, k) => Lerp.Of(e, p0[k], 0.5)).ToArray(), ema[Name(0)].data<float>().ToArray());
    }

    [Fact]
    public void MultiThreadedUpdateMatchesSingleThreadedBitwise()
    {
        torch.manual_seed(7);
        using var pair = new ThreadedAndSingle(new long[] { 700_001, 3, 400_003, 65, 262_145 }, 0.9);
        var (a, b, threaded, single) = (pair.A, pair.B, pair.Threaded, pair.Single);
        for (int step = 0; step < 3; step++)
        {
            UpdateNumericsTests.RandomizeParameters(a);
            CopyParameters(a, b);
            threaded.Update(a);
            single.Update(b);
        }
        foreach (var name in threaded.TrackedNames)
        {
            Assert.Equal(single[name].data<float>().ToArray(), threaded[name].data<float>().ToArray());
        }
    }

    [Fact]
    public void PointerReadsSharedWithTheUpdateThreadsStillCatchRepointedParameters()
    {
        // 300 tensors: several blocks of pointer reads for the woken helper to share; 1.2M elements: threaded.
        torch.manual_seed(11);
        // Helper threads of the pool's own: only they share the pointer reads (LibTorch's OpenMP team is handed the
        // kernels alone).
        using var pair = new ThreadedAndSingle(Enumerable.Repeat(4096L, 300).ToArray(), 0.75, ownThreads: true);
        var (a, b, threaded, single) = (pair.A, pair.B, pair.Threaded, pair.Single);
        for (int step = 0; step < 6; step++)
        {
            UpdateNumericsTests.RandomizeParameters(a);
            CopyParameters(a, b);
            if (step == 3)
            {
                // Re-point one tensor in the first block and one in the last, as set_() would after binding.
                using var _ = torch.no_grad();
                foreach (var model in new[] { a, b })
                {
                    model[7].set_(torch.full(4096, 2f));
                    model[290].set_(torch.full(4096, -1f));
                }
            }
            var before7 = threaded[Name(7)].data<float>().ToArray();
            var before290 = threaded[Name(290)].data<float>().ToArray();
            threaded.Update(a);
            single.Update(b);
            if (step == 3)
            {
                Assert.Equal(before7.Select(e => Lerp.Of(e, 2f, 0.75)), threaded[Name(7)].data<float>().ToArray());
                Assert.Equal(before290.Select(e => Lerp.Of(e, -1f, 0.75)), threaded[Name(290)].data<float>().ToArray());
                Assert.Contains("slow path", threaded.UpdatePath);
            }
        }
        foreach (var name in threaded.TrackedNames)
        {
            Assert.Equal(single[name].data<float>().ToArray(), threaded[name].data<float>().ToArray());
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void AThreadedUpdateWhoseWalkThrowsWritesNothingAndTheNextStepsAreExact(bool ownThreads)
    {
        // A 1024x1024 head makes the update threaded, so its pointer reads are shared with the other thread (on
        // LibTorch's team, where the walk's exception leaves a region; or a helper of the pool's own woken ahead).
        torch.manual_seed(12);
        using var model = new ListModel(reflection: false);
        model.Heads.Add(nn.Linear(1024, 1024));
        using var ema = new EmaManager<ListModel>(model, new EmaOptions { Decay = 0.5, Threads = 2, OwnUpdateThreads = ownThreads });
        Assert.Equal(2, ema.UpdateThreads);
        ema.Update(model);
        var before = ema.TrackedNames.ToDictionary(n => n, n => ema[n].data<float>().ToArray());

        model.Heads[3].bias = null;
        var e = Assert.Throws<InvalidOperationException>(() => ema.Update(model));
        Assert.Contains("'heads.3.bias'", e.Message);
        foreach (var (name, values) in before) Assert.Equal(values, ema[name].data<float>().ToArray());

        model.Heads[3].bias = new TorchSharp.Modules.Parameter(torch.zeros(1024));
        for (int step = 0; step < 4; step++)
        {
            // The head added after construction is not in TorchSharp's registered tree; the generated walk reads it.
            var live = model.named_parameters().ToDictionary(p => p.name, p => (torch.Tensor)p.parameter);
            live["heads.3.weight"] = model.Heads[3].weight!;
            live["heads.3.bias"] = model.Heads[3].bias!;
            using (torch.no_grad())
            {
                foreach (var t in live.Values) t.copy_(torch.randn_like(t));
            }
            var shadows = ema.TrackedNames.ToDictionary(n => n, n => ema[n].data<float>().ToArray());
            var parameters = live.ToDictionary(kv => kv.Key, kv => kv.Value.data<float>().ToArray());
            ema.Update(model);
            foreach (var name in ema.TrackedNames)
            {
                Assert.Equal(shadows[name].Zip(parameters[name], (s, p) => Lerp.Of(s, p, 0.5)), ema[name].data<float>().ToArray());
            }
        }
    }

    [Fact]
    public void NonContiguousParameterTakesTheTorchPath()
    {
        torch.manual_seed(8);
        using var model = new SizedModel(ScalarType.Float32, 12);
        using var ema = new EmaManager<SizedModel>(model, 0.6);
        var before = Values(ema);
        using var backing = torch.randn(24);
        using (torch.no_grad())
        {
            // Same shape, but every other element of other storage: a non-contiguous parameter.
            using var strided = backing.as_strided(new long[] { 12 }, new long[] { 2 });
            model[0].set_(strided);
        }
        Assert.False(model[0].is_contiguous());
        ema.Update(model);
        var p = model[0].data<float>().ToArray();
        var expected = before[0].Select((e, k) => 0.6f * e + 0.4f * p[k]).ToArray();
        AssertClose(expected, ema[Name(0)].data<float>().ToArray(), before[0], p, 0.6f, 0.4f, Name(0));

        using var target = new SizedModel(ScalarType.Float32, 12);
        ema.CopyTo(target);
        Assert.Equal(ema[Name(0)].data<float>().ToArray(), target[0].data<float>().ToArray());
    }

    [Fact]
    public void SteadyStateUpdateAllocatesNoManagedMemory()
    {
        using var small = new SizedModel(ScalarType.Float32, OddSizes);
        using var large = new SizedModel(ScalarType.BFloat16, 1_500_001, 17);
        using var packedModel = new SizedModel(ScalarType.Float32, OddSizes);
        using var a = new EmaManager<SizedModel>(small, new EmaOptions { Decay = 0.9, PackParameters = false });
        using var b = new EmaManager<SizedModel>(large, new EmaOptions { Decay = 0.9, Threads = 2, PackParameters = false });
        using var c = new EmaManager<SizedModel>(packedModel, new EmaOptions { Decay = 0.9, PackParameters = true });
        long allocated = Allocations.OfSteadyState(() =>
        {
            a.Update(small);
            b.Update(large);
            c.Update(packedModel);
        }, warmup: 50, measured: 10);
        Assert.True(allocated == 0, $"{allocated} bytes allocated over 30 updates");
    }

    [Fact]
    public void TrackedBuffersAreAveragedOrCopied()
    {
        torch.manual_seed(9);
        using var model = new NormModel();
        using var ema = new EmaManager<NormModel>(model, new EmaOptions { Decay = 0.5, TrackBuffers = true });
        Assert.Equal(new[] { "fc.weight", "fc.bias", "bn.weight", "bn.bias", "scale", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked" }
            .Order(), ema.TrackedNames.Order());
        var mean0 = ema["bn.running_mean"].data<float>().ToArray();
        model.train();
        using (torch.no_grad())
        {
            for (int i = 0; i < 3; i++) model.call(torch.randn(16, 4)).Dispose();
        }
        ema.Update(model);
        var buffers = model.named_buffers().ToDictionary(b => b.name, b => b.buffer);
        Assert.Equal(3L, buffers["bn.num_batches_tracked"].item<long>());
        Assert.Equal(3L, ema["bn.num_batches_tracked"].item<long>());
        var mean = buffers["bn.running_mean"].data<float>().ToArray();
        Assert.Equal(mean0.Select((e, k) => Lerp.Of(e, mean[k], 0.5)).ToArray(), ema["bn.running_mean"].data<float>().ToArray());
        Assert.Same(ema["bn.running_var"], ema.Shadow.bn.running_var);
        Assert.Contains("bn.num_batches_tracked", ema.StateDict().Keys);

        using var untracked = new EmaManager<NormModel>(model);
        var e = Assert.Throws<InvalidOperationException>(() => untracked.Shadow.bn.running_mean);
        Assert.Contains("TrackBuffers", e.Message);

        // Built-in shadows find their slots by local name (the typed properties are the same entries).
        var bn = untracked.Shadow.bn;
        Assert.Equal(new[] { "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked" }, 
            new[] { "weight", "bias", "running_mean", "running_var", "num_batches_tracked" }.Select(n => bn.Entry(n).Name));
        Assert.True(bn.Entry("weight").IsTracked);
        Assert.False(bn.Entry("running_var").IsTracked);
        Assert.Same(untracked["bn.bias"], bn.Entry("bias").Tensor);
        Assert.Throws<KeyNotFoundException>(() => bn.Entry("ias"));
    }

    private static string Name(int i) => $"leaves.{i}.w";

    // Two models with equal parameters, one averaged on two threads and one on the calling thread alone.
    private sealed class ThreadedAndSingle : IDisposable
    {
        public ThreadedAndSingle(long[] sizes, double decay, bool ownThreads = false)
        {
            A = new SizedModel(ScalarType.Float32, sizes);
            B = new SizedModel(ScalarType.Float32, sizes);
            CopyParameters(A, B);
            Threaded = new EmaManager<SizedModel>(A, new EmaOptions { Decay = decay, Threads = 2, OwnUpdateThreads = ownThreads });
            Single = new EmaManager<SizedModel>(B, new EmaOptions { Decay = decay, Threads = 1 });
            Assert.Equal(2, Threaded.UpdateThreads);
            Assert.Equal(1, Single.UpdateThreads);
        }

        public SizedModel A { get; }
        public SizedModel B { get; }
        public EmaManager<SizedModel> Threaded { get; }
        public EmaManager<SizedModel> Single { get; }

        public void Dispose()
        {
            Threaded.Dispose();
            Single.Dispose();
            A.Dispose();
            B.Dispose();
        }
    }

    private static float[][] Values(EmaManager<SizedModel> ema) =>
        ema.TrackedNames.Select(n => ema[n].data<float>().ToArray()).ToArray();

    internal static void CopyParameters(SizedModel from, SizedModel to)
    {
        using var _ = torch.no_grad();
        for (int i = 0; i < from.Count; i++) to[i].copy_(from[i]);
    }

    // Two float evaluations of e*d + p*w (fused or not, in either order) differ by at most a couple of ulps of the
    // larger term, not of the result: when the terms nearly cancel, the result is small but the rounding is not.
    private static void AssertClose(float[] expected, float[] actual, float[] e0, float[] p, float d, float w, string name)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int k = 0; k < expected.Length; k++)
        {
            float scale = Math.Max(Math.Max(Math.Abs(e0[k] * d), Math.Abs(p[k] * w)), Math.Abs(expected[k]));
            float tolerance = 2 * (MathF.BitIncrement(scale) - scale);
            Assert.True(Math.Abs(expected[k] - actual[k]) <= tolerance, $"{name}[{k}]: {actual[k]} vs {expected[k]}");
        }
    }
}

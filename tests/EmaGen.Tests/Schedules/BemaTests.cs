using System;
using System.Collections.Generic;
using System.Linq;
using System.Threading.Tasks;
using EmaGen.Dcp;
using EmaGen.Tests.Models;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace EmaGen.Tests.Schedules;

/// <summary>
/// BEMA profiles (Block &amp; Zhang 2025) against a float64 reference of the paper's formulas written here:
/// <c>EMA_t = (1 − β_t)·EMA_{t−1} + β_t·θ_t</c>, <c>β_t = max((ρ + γt)^−κ, β_min)</c>, <c>α_t = (ρ + γt)^−η</c>, read as
/// <c>EMA_t + α_t·(θ − θ₀)</c>, with burn-in τ (copies, θ₀ at the last one) and an update every φ steps.
/// </summary>
public sealed class BemaTests
{
    private const int Tau = 10, Phi = 3;
    private const double Kappa = 0.6, Eta = 0.3, Rho = 7, Gamma = 2, BetaMin = 0.01;
    private static readonly string Spec = $"startafter:{Tau}:every:{Phi}:percall:bema:kappa={Kappa},eta={Eta},rho={Rho},gamma={Gamma},betamin={BetaMin}";

    private static EmaOptions Options() => new()
    {
        Profiles = [new EmaProfileOptions("plain", EmaSchedule.Constant(0.9)), new EmaProfileOptions("lagfree", EmaScheduleParser.Parse(Spec))],
    };

    // A training-like walk: each step moves every parameter by a seeded random amount (the same on every call).
    private static void Move(SizedModel model, int step)
    {
        using var _ = no_grad();
        var generator = new torch.Generator((ulong)(1000 + step));
        for (int i = 0; i < model.Count; i++)
        {
            var p = model[i];
            using var noise = randn(p.shape, dtype: ScalarType.Float32, generator: generator).mul_(0.05).add_(0.01);
            p.add_(noise.to_type(p.dtype));
        }
    }

    private sealed class Reference
    {
        public readonly Dictionary<string, double[]> Ema = new(), Theta0 = new();
        public double Alpha;

        public Reference(SizedModel model, IEnumerable<string> names)
        {
            var live = Live(model, names);
            foreach (var (name, v) in live) (Ema[name], Theta0[name]) = ((double[])v.Clone(), (double[])v.Clone());
        }

        public static Dictionary<string, double[]> Live(SizedModel model, IEnumerable<string> names) =>
            names.Zip(Enumerable.Range(0, model.Count), (n, i) => (n, TensorValues.Doubles(model[i]))).ToDictionary(x => x.n, x => x.Item2);

        // Returns whether the step updated.
        public bool Step(long step, Dictionary<string, double[]> theta)
        {
            long t = step - Tau;
            if (t <= 0)
            {
                foreach (var (name, v) in theta) (Ema[name], Theta0[name]) = ((double[])v.Clone(), (double[])v.Clone());
                Alpha = 0;
                return true;
            }
            if (t % Phi != 0) return false;
            double beta = Math.Max(Math.Pow(Rho + Gamma * t, -Kappa), BetaMin);
            foreach (var (name, v) in theta)
            {
                var e = Ema[name];
                for (int j = 0; j < e.Length; j++) e[j] = (1 - beta) * e[j] + beta * v[j];
            }
            Alpha = Math.Pow(Rho + Gamma * t, -Eta);
            return true;
        }

        public double[] Corrected(string name, double[] theta) =>
            Ema[name].Select((e, j) => e + Alpha * (theta[j] - Theta0[name][j])).ToArray();
    }

    private static void Close(double[] expected, Tensor actual, string what)
    {
        var a = TensorValues.Doubles(actual);
        Assert.Equal(expected.Length, a.Length);
        for (int j = 0; j < a.Length; j++)
        {
            Assert.True(Math.Abs(a[j] - expected[j]) <= 2e-6 * Math.Max(1, Math.Abs(expected[j])), $"{what}[{j}]: {a[j]} vs reference {expected[j]}");
        }
    }

    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.BFloat16)]
    public void TwoHundredStepsWithBurnInAndIntervalMatchTheFormulas(ScalarType dtype)
    {
        manual_seed(3);
        using var model = new SizedModel(dtype, 7, 33, 1, 64);
        using var ema = new EmaManager<SizedModel>(model, Options());
        var names = ema.TrackedNames;
        var reference = new Reference(model, names);
        var lagfree = ema.Profile("lagfree");
        using var export = new SizedModel(dtype, 7, 33, 1, 64);
        int checkedSteps = 0;
        for (int step = 1; step <= 200; step++)
        {
            Move(model, step);
            ema.Update(model);
            var theta = Reference.Live(model, names);
            if (!reference.Step(step, theta)) continue;
            Assert.Equal(reference.Alpha, ema.AlphaOf(1));
            var state = lagfree.StateDict();
            try
            {
                foreach (var name in names)
                {
                    // The EMA in the shadow's dtype (fp32 for bf16 parameters), θ₀ in the parameter's.
                    Assert.Equal(ScalarType.Float32, lagfree[name].dtype);
                    Assert.Equal(dtype, ema.AnchorOf(1, name).dtype);
                    Close(reference.Ema[name], lagfree[name], $"step {step} EMA {name}");
                    Close(reference.Theta0[name], ema.AnchorOf(1, name), $"step {step} θ₀ {name}");
                    Close(reference.Corrected(name, theta[name]), state[name], $"step {step} corrected {name}");
                }
            }
            finally
            {
                foreach (var t in state.Values) t.Dispose();
            }
            checkedSteps++;
        }
        Assert.Equal(Tau + (200 - Tau) / Phi, checkedSteps);

        // A copy into another model and a swap read the same corrected weights (in the model's dtype); the swap restores.
        var corrected = lagfree.StateDict();
        lagfree.CopyTo(export);
        var before = Enumerable.Range(0, model.Count).Select(i => TensorValues.Bits(model[i])).ToList();
        using (lagfree.SwapInto(model))
        {
            for (int i = 0; i < model.Count; i++)
            {
                using var expected = corrected[names[i]].to_type(dtype);
                Assert.Equal(TensorValues.Bits(expected), TensorValues.Bits(export[i]));
                Assert.Equal(TensorValues.Bits(expected), TensorValues.Bits(model[i]));
            }
        }
        for (int i = 0; i < model.Count; i++) Assert.Equal(before[i], TensorValues.Bits(model[i]));
        // The plain profile beside it is an ordinary EMA.
        Assert.Equal(0.0, ema.AlphaOf(0));
        Assert.Throws<NotSupportedException>(() => lagfree.LoadStateDict(corrected));
        foreach (var t in corrected.Values) t.Dispose();
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task ResumedMidwayIsBitEqualToAnUninterruptedRun(bool async)
    {
        using var folder = TestPaths.NewTempFolder();
        manual_seed(4);
        using var model = new SizedModel(ScalarType.Float32, 7, 33, 1, 64);
        using var whole = new EmaManager<SizedModel>(model, Options());
        var first = new EmaManager<SizedModel>(model, Options());
        EmaManager<SizedModel>? resumed = null;
        try
        {
            for (int step = 1; step <= 200; step++)
            {
                Move(model, step);
                whole.Update(model);
                if (step <= 101)
                {
                    first.Update(model);
                    if (step == 101)
                    {
                        // Step 101 is between updates (t = 91): the checkpoint holds the live weights' correction of the moment.
                        if (async) await first.SaveAsync(folder["mid"]);
                        else first.Save(folder["mid"]);
                        first.Dispose();
                        resumed = new EmaManager<SizedModel>(model, Options());
                        resumed.Load(folder["mid"]);
                    }
                }
                else
                {
                    resumed!.Update(model);
                }
            }
            Assert.Equal(whole.Step, resumed!.Step);
            Assert.Equal(whole.AlphaOf(1), resumed.AlphaOf(1));
            foreach (var name in whole.TrackedNames)
            {
                Assert.Equal(TensorValues.Bits(whole.Profile("lagfree")[name]), TensorValues.Bits(resumed.Profile("lagfree")[name]));
                Assert.Equal(TensorValues.Bits(whole.AnchorOf(1, name)), TensorValues.Bits(resumed.AnchorOf(1, name)));
                Assert.Equal(TensorValues.Bits(whole.Profile("plain")[name]), TensorValues.Bits(resumed.Profile("plain")[name]));
            }
            whole.Save(folder["a"]);
            resumed.Save(folder["b"]);
            var a = DcpReader.Open(folder["a"]);
            var b = DcpReader.Open(folder["b"]);
            var corrected = whole.Profile("lagfree").StateDict();
            foreach (var name in whole.TrackedNames)
            {
                // The usual key holds the corrected weights (what PyTorch and export read); the resume keys the EMA and θ₀.
                using var stored = a.ReadTensor("ema.lagfree." + name);
                Assert.Equal(TensorValues.Bits(corrected[name]), TensorValues.Bits(stored));
                using var storedEma = a.ReadTensor("ema.lagfree._emagen.bema_ema." + name);
                Assert.Equal(TensorValues.Bits(whole.Profile("lagfree")[name]), TensorValues.Bits(storedEma));
                Assert.NotEqual(TensorValues.Bits(storedEma), TensorValues.Bits(stored));
                foreach (var key in new[] { "ema.lagfree." + name, "ema.lagfree._emagen.bema_ema." + name, "ema.lagfree._emagen.bema_anchor." + name, "ema.plain." + name })
                {
                    using var x = a.ReadTensor(key);
                    using var y = b.ReadTensor(key);
                    Assert.Equal(TensorValues.Bits(x), TensorValues.Bits(y));
                }
            }
            foreach (var t in corrected.Values) t.Dispose();
        }
        finally
        {
            first.Dispose();
            resumed?.Dispose();
        }
    }

    [Fact]
    public void ACheckpointWithoutTheResumeKeysIsRefusedAndChangesNothing()
    {
        using var folder = TestPaths.NewTempFolder();
        manual_seed(6);
        using var model = new SizedModel(ScalarType.Float32, 5, 9);
        var plain = new EmaOptions { Profiles = [new EmaProfileOptions("plain", EmaSchedule.Constant(0.9)), new EmaProfileOptions("lagfree", EmaSchedule.Constant(0.5))] };
        using (var other = new EmaManager<SizedModel>(model, plain)) other.Save(folder["c"]);
        using var ema = new EmaManager<SizedModel>(model, Options());
        Move(model, 1);
        ema.Update(model);
        var before = TensorValues.Bits(ema.Profile("lagfree")[ema.TrackedNames[0]]);
        var e = Assert.Throws<CheckpointFormatException>(() => ema.Load(folder["c"], allowScheduleMismatch: true));
        Assert.Contains("'ema.lagfree._emagen.bema_ema.", e.Message);
        Assert.Equal(before, TensorValues.Bits(ema.Profile("lagfree")[ema.TrackedNames[0]]));
    }

    [Fact]
    public async Task WorldSizeThreeEqualsWorldSizeOneBitwise()
    {
        using var folder = TestPaths.NewTempFolder();
        manual_seed(5);
        using var model = new SizedModel(ScalarType.Float32, 7, 33, 1, 64);
        using var one = new ShardedEmaManager<SizedModel>(model, 0, 1, Options());
        const int world = 3;
        var ranks = Enumerable.Range(0, world).Select(r => new ShardedEmaManager<SizedModel>(model, r, world, Options())).ToList();
        try
        {
            for (int step = 1; step <= 100; step++)
            {
                Move(model, step);
                one.Update(model);
                foreach (var rank in ranks) rank.Update(model);
            }
            var whole = one.StateDict(1);
            foreach (var rank in ranks)
            {
                var shards = rank.StateDict(1);
                foreach (var (name, shard) in shards)
                {
                    var full = whole[name].Local;
                    using var expected = full.shape.Length == 0 || shard.Local.shape[0] == full.shape[0] ? full.alias() : full.narrow(0, shard.Offsets[0], shard.Local.shape[0]);
                    Assert.Equal(TensorValues.Bits(expected), TensorValues.Bits(shard.Local));
                    using var emaBox = one.Profiles[1][name].narrow(0, shard.Offsets[0], shard.Local.shape[0]);
                    Assert.Equal(TensorValues.Bits(emaBox), TensorValues.Bits(rank.Profiles[1][name]));
                    shard.Local.Dispose();
                }
            }
            // The sharded checkpoint holds corrected shards: whole, they are world size 1's corrected weights.
            await Task.WhenAll(ranks.Select(rank => Task.Run(() => rank.Save(folder["s"], "s1", TimeSpan.FromSeconds(30)))));
            var reader = DcpReader.Open(folder["s"]);
            foreach (var (name, shard) in whole)
            {
                using var stored = reader.ReadTensor("ema.lagfree." + name);
                Assert.Equal(TensorValues.Bits(shard.Local), TensorValues.Bits(stored));
            }
            // An asynchronous save of every rank holds the corrected shards as they were at the call, while the ranks
            // train on before it is awaited (each rank forms its corrected shard into staging at the call).
            var saves = ranks.Select(rank => rank.SaveAsync(folder["a"], "a1", TimeSpan.FromSeconds(30))).ToList();
            for (int step = 101; step <= 105; step++)
            {
                Move(model, step);
                foreach (var rank in ranks) rank.Update(model);
            }
            await Task.WhenAll(saves);
            var asyncReader = DcpReader.Open(folder["a"]);
            foreach (var (name, shard) in whole)
            {
                using var stored = asyncReader.ReadTensor("ema.lagfree." + name);
                Assert.Equal(TensorValues.Bits(shard.Local), TensorValues.Bits(stored));
            }
            // Not vacuous: the ranks' corrected weights have moved since the call.
            var nowShards = ranks[0].StateDict(1);
            bool moved = false;
            foreach (var (name, shard) in nowShards)
            {
                var full = whole[name].Local;
                using var then = full.shape.Length == 0 || shard.Local.shape[0] == full.shape[0] ? full.alias() : full.narrow(0, shard.Offsets[0], shard.Local.shape[0]);
                moved |= !TensorValues.Bits(then).SequenceEqual(TensorValues.Bits(shard.Local));
                shard.Local.Dispose();
            }
            Assert.True(moved, "the corrected weights did not move after the call");
            // And resuming world size 1 from it gives back its own EMA.
            using var back = new ShardedEmaManager<SizedModel>(model, 0, 1, Options());
            back.Load(folder["s"]);
            foreach (var name in one.TrackedNames)
            {
                Assert.Equal(TensorValues.Bits(one.Profiles[1][name]), TensorValues.Bits(back.Profiles[1][name]));
                Assert.Equal(TensorValues.Bits(one.AnchorOf(1, name)), TensorValues.Bits(back.AnchorOf(1, name)));
            }
            foreach (var s in whole.Values) s.Local.Dispose();
        }
        finally
        {
            foreach (var rank in ranks) rank.Dispose();
        }
    }
}

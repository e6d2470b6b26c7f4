using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using EmaGen.Dcp;
using EmaGen.Tests.Models;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;

namespace EmaGen.Tests.Schedules;

/// <summary>EDM2 post-hoc EMA: the profile algebra, and reconstruction of an untracked width from snapshots of two tracked ones.</summary>
public sealed class PostHocTests
{
    private const int Steps = 4000;
    private const int SnapshotEvery = 250;

    private readonly ITestOutputHelper _output;

    public PostHocTests(ITestOutputHelper output) => _output = output;

    [Theory]
    [InlineData(100, 6.94, 300, 16.97)]
    [InlineData(300, 6.94, 100, 16.97)]
    [InlineData(200, 3.5, 200, 3.5)]
    public void InnerProductIsTheIntegralOfTheTwoProfiles(long ta, double ga, long tb, double gb)
    {
        // Simpson's rule on [0, min(ta, tb)], where both profiles are non-zero, with p(τ) = (γ+1) τ^γ / t^(γ+1).
        double P(double tau, double t, double g) => (g + 1) * Math.Pow(tau, g) / Math.Pow(t, g + 1);
        double end = Math.Min(ta, tb);
        const int intervals = 20_000;
        double h = end / intervals, sum = 0;
        for (int i = 0; i <= intervals; i++)
        {
            double tau = i * h;
            double weight = i == 0 || i == intervals ? 1 : i % 2 == 1 ? 4 : 2;
            sum += weight * P(tau, ta, ga) * P(tau, tb, gb);
        }
        double integral = sum * h / 3;
        Assert.Equal(integral, PostHocSolver.InnerProduct(ta, ga, tb, gb), 1e-9 * Math.Max(1, integral));
        Assert.Equal(PostHocSolver.InnerProduct(ta, ga, tb, gb), PostHocSolver.InnerProduct(tb, gb, ta, ga), 12);
    }

    [Fact]
    public void SolverReproducesABasisProfileAndNormalises()
    {
        var basis = new[] { (1000L, 6.94), (1000L, 16.97), (2000L, 6.94), (2000L, 16.97) };
        var exact = PostHocSolver.Solve(basis, 2000, 16.97);
        Assert.Equal(new[] { 0.0, 0.0, 0.0, 1.0 }, exact.Select(x => Math.Round(x, 9)));

        var between = PostHocSolver.Solve(basis, 2000, PowerFunctionSchedule.GammaFromSigmaRel(0.075));
        Assert.Equal(1.0, between.Sum(), 12);
        Assert.Throws<ArgumentException>(() => PostHocSolver.Solve(basis, 1500, 6.94));
        Assert.Throws<ArgumentException>(() => PostHocSolver.Solve([(1000L, 6.94), (1000L, 6.94)], 1000, 6.94));
    }

    /// <summary>
    /// A known trajectory (linear, quadratic, oscillating; the other parameters constant) is averaged by two tracked
    /// profiles (σ_rel 0.05 and 0.10) with fp32 snapshots every 250 of 4000 steps, and by a third manager tracking σ_rel
    /// 0.075 directly. The reconstruction of 0.075 must land far closer to that direct EMA than the two tracked profiles
    /// are to each other (the scale of what choosing a width changes): within 1% of their gap (measured: 0.03-0.04%; the
    /// remainder is the discrete update's O(1/t) departure from the continuous profiles the solver assumes). Constant parameters
    /// come back exactly up to fp32 rounding, because the coefficients sum to 1.
    /// </summary>
    [Fact]
    public void ReconstructionOfAnUntrackedWidthMatchesTrackingItDirectly()
    {
        using var folder = TestPaths.NewTempFolder();
        var (tracked, reference, model) = Train(folder["snapshots"], torch.ScalarType.Float32, Steps);
        using var _ = tracked;
        using var __ = reference;
        using var ___ = model;

        var result = PostHocEma.Synthesize(folder["snapshots"], 0.075, Steps, folder["out"]);
        _output.WriteLine(result.ToString());
        Assert.Equal(2 * Steps / SnapshotEvery, result.Terms.Count);
        Assert.Equal(1.0, result.Terms.Sum(t => t.Coefficient), 9);

        using var synthesized = new EmaManager<BareParameters>(model, new EmaOptions { Schedule = EmaSchedule.PowerFunction(0.075) });
        synthesized.Load(folder["out"]);
        Assert.Equal(Steps, synthesized.Step);

        var narrow = tracked.Profile("sigma050")["alpha"].data<float>().ToArray();
        var wide = tracked.Profile("sigma100")["alpha"].data<float>().ToArray();
        var direct = reference["alpha"].data<float>().ToArray();
        var rebuilt = synthesized["alpha"].data<float>().ToArray();
        for (int i = 0; i < 3; i++)
        {
            double gap = Math.Abs(narrow[i] - wide[i]);
            double error = Math.Abs(rebuilt[i] - direct[i]);
            _output.WriteLine($"alpha[{i}]: 0.05 {narrow[i]:F6}  0.10 {wide[i]:F6}  direct 0.075 {direct[i]:F6}  rebuilt {rebuilt[i]:F6}  error/gap {error / gap:F5}");
            Assert.True(error <= 0.01 * gap, $"alpha[{i}]: rebuilt {rebuilt[i]}, direct {direct[i]}, gap between tracked profiles {gap}");
        }
        // The linear and quadratic components have closed forms: the continuous profile of γ averages (τ/T)^m over
        // [0, t] to (γ+1)/(γ+m+1)·(t/T)^m. The update is discrete (integer iterates, β_t = (1 − 1/t)^(γ+1)), which
        // departs from the continuous profile by O((γ+1)/t), here about 1e-4 in value; measured: 0.18-0.20% of the gap.
        double gammaTarget = PowerFunctionSchedule.GammaFromSigmaRel(0.075);
        for (int m = 1; m <= 2; m++)
        {
            double closedForm = (gammaTarget + 1) / (gammaTarget + m + 1);
            double gap = Math.Abs(narrow[m - 1] - wide[m - 1]);
            _output.WriteLine($"alpha[{m - 1}] closed form {closedForm:F6}, rebuilt {rebuilt[m - 1]:F6}, error/gap {Math.Abs(rebuilt[m - 1] - closedForm) / gap:F5}");
            Assert.True(Math.Abs(rebuilt[m - 1] - closedForm) <= 0.01 * gap, $"alpha[{m - 1}]: rebuilt {rebuilt[m - 1]}, closed form {closedForm}");
        }
        foreach (var name in new[] { "beta", "gamma" })
        {
            var constant = model.named_parameters().First(p => p.name == name).parameter.data<float>().ToArray();
            var back = synthesized[name].data<float>().ToArray();
            for (int i = 0; i < constant.Length; i++) Assert.Equal(constant[i], back[i], 5e-6f * Math.Max(1, Math.Abs(constant[i])));
        }
    }

    [Fact]
    public void SnapshotsAfterTheTargetAreIgnoredAndFp16SnapshotsStayWithinTheirRounding()
    {
        using var folder = TestPaths.NewTempFolder();
        var (tracked, _, model) = Train(folder["all"], torch.ScalarType.Float16, Steps);
        tracked.Dispose();
        model.Dispose();
        Assert.Equal(torch.ScalarType.Float16, DcpReader.Open(Path.Combine(folder["all"], "step-0000004000")).ReadTensor("sigma050.alpha").dtype);

        // The same snapshots up to step 2000 only, in a folder of their own.
        Directory.CreateDirectory(folder["early"]);
        foreach (var dir in Directory.GetDirectories(folder["all"]).Where(d => long.Parse(Path.GetFileName(d)[5..]) <= 2000))
        {
            var copy = Path.Combine(folder["early"], Path.GetFileName(dir));
            Directory.CreateDirectory(copy);
            foreach (var file in Directory.GetFiles(dir)) File.Copy(file, Path.Combine(copy, Path.GetFileName(file)));
        }
        var fromAll = PostHocEma.Synthesize(folder["all"], 0.075, 2000, folder["a"]);
        var fromEarly = PostHocEma.Synthesize(folder["early"], 0.075, 2000, folder["b"]);
        Assert.Equal(16, fromAll.IgnoredLaterSnapshots);
        Assert.Equal(0, fromEarly.IgnoredLaterSnapshots);
        Assert.All(fromAll.Terms, t => Assert.True(t.Snapshot.Step <= 2000));
        var a = DcpReader.Open(folder["a"]);
        var b = DcpReader.Open(folder["b"]);
        foreach (var key in new[] { "ema.alpha", "ema.beta", "ema.gamma" })
        {
            Assert.Equal(b.ReadTensor(key).data<float>().ToArray(), a.ReadTensor(key).data<float>().ToArray());
        }

        // Against fp32 snapshots of the same run: each term's fp16 rounding is at most 2^-11 relative, so the sums differ
        // by at most Σ|x_i| · 2^-11 · max|θ|.
        var (exactTracked, _, exactModel) = Train(folder["fp32"], torch.ScalarType.Float32, 2000);
        exactTracked.Dispose();
        exactModel.Dispose();
        PostHocEma.Synthesize(folder["fp32"], 0.075, 2000, folder["c"]);
        double bound = fromAll.Terms.Sum(t => Math.Abs(t.Coefficient)) * Math.Pow(2, -11) * 1.0;
        var rounded = a.ReadTensor("ema.alpha").data<float>().ToArray();
        var exact = DcpReader.Open(folder["c"]).ReadTensor("ema.alpha").data<float>().ToArray();
        _output.WriteLine($"fp16 bound {bound:E3}, differences {string.Join(", ", rounded.Zip(exact, (r, e) => Math.Abs(r - e).ToString("E3")))}");
        for (int i = 0; i < 3; i++) Assert.True(Math.Abs(rounded[i] - exact[i]) <= bound, $"alpha[{i}]: fp16 {rounded[i]}, fp32 {exact[i]}, bound {bound}");
    }

    [Fact]
    public async System.Threading.Tasks.Task ShardedSnapshotsSynthesiseExactlyLikeDenseOnes()
    {
        using var folder = TestPaths.NewTempFolder();
        torch.manual_seed(5);
        using var model = new SizedModel(torch.ScalarType.Float32, 7, 5, 1, 64);
        EmaProfileOptions[] profiles = [new("narrow", EmaSchedule.PowerFunction(0.05)), new("wide", EmaSchedule.PowerFunction(0.10))];
        using var dense = new EmaManager<SizedModel>(model, new EmaOptions { Profiles = profiles });
        const int world = 3;
        var ranks = Enumerable.Range(0, world).Select(r => new ShardedEmaManager<SizedModel>(model, r, world, new EmaOptions { Profiles = profiles })).ToList();
        try
        {
            for (int step = 1; step <= 60; step++)
            {
                Runtime.UpdateNumericsTests.RandomizeParameters(model);
                dense.Update(model);
                foreach (var rank in ranks) rank.Update(model);
                if (step % 20 != 0) continue;
                PostHocEma.SaveSnapshot(dense, folder["dense"]);
                // Blocking snapshots (each rank on a thread of its own) and background ones alternate.
                if (step % 40 == 0)
                {
                    await System.Threading.Tasks.Task.WhenAll(ranks.Select(rank => PostHocEma.SaveSnapshotAsync(rank, folder["sharded"], TimeSpan.FromSeconds(30))));
                }
                else
                {
                    await System.Threading.Tasks.Task.WhenAll(ranks.Select(rank => System.Threading.Tasks.Task.Run(
                        () => PostHocEma.SaveSnapshot(rank, folder["sharded"], TimeSpan.FromSeconds(30)))));
                }
            }
        }
        finally
        {
            foreach (var rank in ranks) rank.Dispose();
        }
        var shardedFolder = DcpReader.Open(Path.Combine(folder["sharded"], "step-0000000060"));
        Assert.Equal(world, ((DcpTensorEntry)shardedFolder.Metadata.Find("wide.leaves.3.w")!).Chunks.Count);

        var fromDense = PostHocEma.Synthesize(folder["dense"], 0.07, 60, folder["a"]);
        var fromSharded = PostHocEma.Synthesize(folder["sharded"], 0.07, 60, folder["b"]);
        Assert.Equal(fromDense.Terms.Select(t => t.Coefficient), fromSharded.Terms.Select(t => t.Coefficient));
        var a = DcpReader.Open(folder["a"]);
        var b = DcpReader.Open(folder["b"]);
        foreach (var name in dense.TrackedNames)
        {
            Assert.Equal(a.ReadTensor("ema." + name).data<float>().ToArray(), b.ReadTensor("ema." + name).data<float>().ToArray());
        }
    }

    [Fact]
    public void BadInputsAreClearErrors()
    {
        using var folder = TestPaths.NewTempFolder();
        using var model = new BareParameters(reflection: false);
        using var constant = new EmaManager<BareParameters>(model, 0.9);
        constant.Update(model);
        var none = Assert.Throws<InvalidOperationException>(() => PostHocEma.SaveSnapshot(constant, folder["s"]));
        Assert.Contains("power-function", none.Message);

        using var power = new EmaManager<BareParameters>(model, new EmaOptions { Schedule = EmaSchedule.PowerFunction(0.1) });
        Assert.Throws<InvalidOperationException>(() => PostHocEma.SaveSnapshot(power, folder["s"]));
        for (int i = 0; i < 10; i++) power.Update(model);
        var written = PostHocEma.SaveSnapshot(power, folder["s"]);
        Assert.Equal("step-0000000010", Path.GetFileName(written));
        var early = Assert.Throws<ArgumentException>(() => PostHocEma.Synthesize(folder["s"], 0.1, 5, folder["o"]));
        Assert.Contains("no snapshot at or before step 5", early.Message);
        Assert.False(Directory.Exists(folder["o"]));

        constant.Save(Path.Combine(folder["s"], "step-0000000020"));
        var foreign = Assert.Throws<CheckpointFormatException>(() => PostHocEma.Synthesize(folder["s"], 0.1, 20, folder["o"]));
        Assert.Contains("step-0000000020", foreign.Message);
        Assert.Throws<DirectoryNotFoundException>(() => PostHocEma.Synthesize(folder["missing"], 0.1, 20, folder["o"]));
    }

    [Fact]
    public void TamperedSnapshotsAreRejectedByKeyAndAnEarlierOutputSurvives()
    {
        using var folder = TestPaths.NewTempFolder();
        using var model = new BareParameters(reflection: false);
        using var ema = new EmaManager<BareParameters>(model, new EmaOptions { Schedule = EmaSchedule.PowerFunction(0.1) });
        for (int i = 0; i < 20; i++) ema.Update(model);
        PostHocEma.SaveSnapshot(ema, folder["good"]);
        PostHocEma.Synthesize(folder["good"], 0.1, 20, folder["out"]);
        var before = DcpReader.Open(folder["out"]).ReadTensor("ema.alpha").data<float>().ToArray();

        void Tamper(string name, params KeyValuePair<string, object?>[] changes)
        {
            var source = DcpReader.Open(Path.Combine(folder["good"], "step-0000000020"));
            var state = new Dictionary<string, object?>(StringComparer.Ordinal);
            foreach (var entry in source.Entries)
            {
                state[entry.Key] = entry is DcpTensorEntry ? source.ReadTensor(entry.Key) : source.ReadValue(entry.Key);
            }
            foreach (var (key, value) in changes)
            {
                if (value is null) state.Remove(key); else state[key] = value;
            }
            DcpWriter.Save(Path.Combine(folder[name], "step-0000000020"), state);
        }

        Tamper("gamma", new KeyValuePair<string, object?>("ema._emagen.gamma", "seven"));
        Tamper("nan", new KeyValuePair<string, object?>("ema._emagen.gamma", double.NaN));
        Tamper("step", new KeyValuePair<string, object?>("_emagen.step", -4L));
        Tamper("format", new KeyValuePair<string, object?>("_emagen.format", "something/else"));
        foreach (var (name, key) in new[] { ("gamma", "ema._emagen.gamma"), ("nan", "ema._emagen.gamma"), ("step", "_emagen.step"), ("format", "_emagen.format") })
        {
            var e = Assert.Throws<CheckpointFormatException>(() => PostHocEma.Synthesize(folder[name], 0.1, 20, folder["out"]));
            Assert.True(e.Message.Contains(key, StringComparison.Ordinal), $"{name}: {e.Message}");
        }

        // A second snapshot whose parameters differ from the first's (a different model) is named, not mixed in.
        Tamper("mixed", new KeyValuePair<string, object?>("ema.beta", null), new KeyValuePair<string, object?>("_emagen.step", 10L));
        Directory.Move(Path.Combine(folder["mixed"], "step-0000000020"), Path.Combine(folder["mixed"], "step-0000000010"));
        CopyFolder(Path.Combine(folder["good"], "step-0000000020"), Path.Combine(folder["mixed"], "step-0000000020"));
        var mixed = Assert.Throws<ArgumentException>(() => PostHocEma.Synthesize(folder["mixed"], 0.1, 20, folder["out"]));
        Assert.True(mixed.Message.Contains("beta", StringComparison.Ordinal), mixed.Message);

        // A renamed folder does not pass for another step.
        Directory.Move(Path.Combine(folder["mixed"], "step-0000000010"), Path.Combine(folder["mixed"], "step-0000000015"));
        var renamed = Assert.Throws<CheckpointFormatException>(() => PostHocEma.Synthesize(folder["mixed"], 0.1, 20, folder["out"]));
        Assert.Contains("named for step '0000000015'", renamed.Message);

        Assert.Equal(before, DcpReader.Open(folder["out"]).ReadTensor("ema.alpha").data<float>().ToArray());
    }

    private static void CopyFolder(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var file in Directory.GetFiles(from)) File.Copy(file, Path.Combine(to, Path.GetFileName(file)));
    }

    // Two tracked power-function profiles with snapshots, and a manager tracking σ_rel 0.075 directly.
    private static (EmaManager<BareParameters> Tracked, EmaManager<BareParameters> Reference, BareParameters Model) Train(
        string snapshots, torch.ScalarType dtype, int steps)
    {
        torch.manual_seed(11);
        var model = new BareParameters(reflection: false);
        var alpha = model.named_parameters().First(p => p.name == "alpha").parameter;
        var tracked = new EmaManager<BareParameters>(model, new EmaOptions
        {
            Profiles = [new("sigma050", EmaSchedule.PowerFunction(0.05)), new("sigma100", EmaSchedule.PowerFunction(0.10))],
        });
        var reference = new EmaManager<BareParameters>(model, new EmaOptions { Schedule = EmaSchedule.PowerFunction(0.075) });
        var values = new float[3];
        for (int step = 1; step <= steps; step++)
        {
            double x = (double)step / Steps;
            values[0] = (float)x;
            values[1] = (float)(x * x);
            values[2] = (float)Math.Sin(6 * Math.PI * x);
            using (torch.no_grad())
            {
                using var v = torch.tensor(values);
                alpha.copy_(v);
            }
            tracked.Update(model);
            reference.Update(model);
            if (step % SnapshotEvery == 0) PostHocEma.SaveSnapshot(tracked, snapshots, dtype);
        }
        return (tracked, reference, model);
    }
}

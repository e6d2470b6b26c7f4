using System;
using System.Collections.Generic;
using System.Linq;
using EmaGen.Tests.Models;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;

namespace EmaGen.Tests.Runtime;

/// <summary>
/// The non-finite guard on every path: a NaN or infinity injected into one parameter element at one step leaves exactly
/// that shadow element as it was and every other element bit-equal to a clean run (raw kernels, pair kernels, the
/// decay-0 copy, blocks of three profiles, the parallel chunks, the TorchSharp-op path, shards; fp32/bf16/fp16/fp64
/// parameters, low-precision shadows; both managers); a NaN-seeded shadow heals; the throw policy writes nothing; the
/// report names the tensor and counts the elements.
/// </summary>
public sealed class NonFiniteGuardTests
{
    public enum Manager { Dense, ShardedOne, ShardedRank0Of2, ShardedRank1Of2 }

    private static readonly long[] Sizes = { 37, 5, 300, 1 };
    private const int BadStep = 3;
    private const int BadLeaf = 2;
    private const int BadElement = 123;

    private static EmaProfileOptions[] ProfileSet(int set) => set switch
    {
        1 => [new("a", EmaSchedule.Constant(0.9))],
        2 => [new("a", EmaSchedule.Constant(0.9)), new("b", EmaSchedule.Constant(0.99))],
        _ => [new("a", EmaSchedule.Constant(0.9)), new("b", EmaSchedule.Constant(0.99)), new("copy", EmaSchedule.Constant(0.0))],
    };

    public static IEnumerable<object[]> Cases()
    {
        var dtypes = new (torch.ScalarType, bool)[]
        {
            (torch.ScalarType.Float32, false), (torch.ScalarType.BFloat16, false), (torch.ScalarType.Float16, false),
            (torch.ScalarType.BFloat16, true), (torch.ScalarType.Float16, true), (torch.ScalarType.Float64, false),
        };
        foreach (var (dtype, low) in dtypes)
        {
            foreach (bool ops in new[] { false, true })
            {
                foreach (var manager in Enum.GetValues<Manager>())
                {
                    foreach (int set in new[] { 1, 2, 3 }) yield return [dtype, low, ops, manager, set];
                }
            }
        }
    }

    private static EmaManagerBase<SizedModel> Make(SizedModel model, Manager manager, EmaOptions options) => manager switch
    {
        Manager.Dense => new EmaManager<SizedModel>(model, options),
        Manager.ShardedOne => new ShardedEmaManager<SizedModel>(model, 0, 1, options),
        Manager.ShardedRank0Of2 => new ShardedEmaManager<SizedModel>(model, 0, 2, options),
        _ => new ShardedEmaManager<SizedModel>(model, 1, 2, options),
    };

    // The parameters of step `step`, the same for every model and run.
    internal static void SetParameters(SizedModel model, int step, long[] sizes)
    {
        var generator = new torch.Generator((ulong)(1000 + step));
        using var _ = torch.no_grad();
        for (int i = 0; i < model.Count; i++)
        {
            using var values = torch.randn(sizes[i], generator: generator);
            model[i].copy_(values);
        }
    }

    internal static void Inject(SizedModel model, int leaf, long element, float value)
    {
        using var _ = torch.no_grad();
        using var cell = model[leaf].narrow(0, element, 1);
        cell.fill_(value);
    }

    // Every element's bits, per profile and tracked name.
    private static Dictionary<(int, string), ulong[]> Shadows(EmaManagerBase<SizedModel> ema)
    {
        var result = new Dictionary<(int, string), ulong[]>();
        for (int k = 0; k < ema.ProfileList.Count; k++)
        {
            foreach (var name in ema.TrackedNames) result[(k, name)] = ElementBits(ema.ProfileList[k][name]);
        }
        return result;
    }

    internal static ulong[] ElementBits(torch.Tensor t)
    {
        var bytes = TensorValues.Bits(t);
        int size = (int)t.ElementSize;
        var bits = new ulong[bytes.Length / size];
        for (int i = 0; i < bits.Length; i++)
        {
            ulong v = 0;
            for (int b = 0; b < size; b++) v |= (ulong)bytes[i * size + b] << (8 * b);
            bits[i] = v;
        }
        return bits;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void ANonFiniteElementLeavesExactlyItsShadowElementAndNothingElse(torch.ScalarType dtype, bool lowPrecision, bool ops, Manager manager, int set)
    {
        foreach (float bad in new[] { float.NaN, float.PositiveInfinity })
        {
            var options = new EmaOptions { Profiles = ProfileSet(set), LowPrecisionShadow = lowPrecision, ForceTorchOps = ops };
            using var cleanModel = new SizedModel(dtype, Sizes);
            using var badModel = new SizedModel(dtype, Sizes);
            SetParameters(cleanModel, 0, Sizes);
            SetParameters(badModel, 0, Sizes);
            using var clean = Make(cleanModel, manager, options);
            using var guarded = Make(badModel, manager, options);
            for (int step = 1; step <= BadStep; step++)
            {
                SetParameters(cleanModel, step, Sizes);
                SetParameters(badModel, step, Sizes);
                var before = Shadows(guarded);
                if (step == BadStep) Inject(badModel, BadLeaf, BadElement, bad);
                clean.Update(cleanModel);
                guarded.Update(badModel);
                var expected = Shadows(clean);
                var actual = Shadows(guarded);
                int differing = 0;
                foreach (var (key, bits) in expected)
                {
                    for (int j = 0; j < bits.Length; j++)
                    {
                        if (actual[key][j] == bits[j]) continue;
                        differing++;
                        // The only element allowed to differ is the injected one, and it kept its value.
                        Assert.True(step == BadStep && key.Item2 == $"leaves.{BadLeaf}.w", $"{key} [{j}] at step {step}");
                        Assert.Equal(before[key][j], actual[key][j]);
                    }
                }
                var report = guarded.LastUpdate;
                Assert.Equal(step, report.Step);
                Assert.Equal(0, report.HealedElements);
                if (step < BadStep)
                {
                    Assert.Equal(0, differing);
                    Assert.Equal(0, report.NonFiniteElements);
                    continue;
                }
                // The injected element belongs to this manager unless it is the other rank's shard.
                bool mine = BoxHolds(manager, BadElement);
                Assert.Equal(mine ? 1 : 0, report.NonFiniteElements);
                Assert.Equal(mine ? new[] { $"leaves.{BadLeaf}.w" } : Array.Empty<string>(), report.NonFiniteTensors);
                // Every profile kept its element (the decay-0 copy included), so each differs from the clean run there.
                Assert.Equal(mine ? ProfileSet(set).Length : 0, differing);
            }
        }
    }

    // Whether this manager's box of the bad leaf holds element `element` (a sharded rank keeps rows [offset, offset + n)).
    private static bool BoxHolds(Manager manager, long element)
    {
        if (manager is not (Manager.ShardedRank0Of2 or Manager.ShardedRank1Of2)) return true;
        var (offset, size) = ShardLayout.Chunk(Sizes[BadLeaf], 2, manager == Manager.ShardedRank0Of2 ? 0 : 1);
        return element >= offset && element < offset + size;
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void TheParallelChunksKeepTheElementAndNameEveryTensorInOrder(int set)
    {
        // Over a million elements on two threads: the step is cut into chunks taken by either thread; the report merges
        // them in chunk order, so it names the tensors in model order whichever thread met them.
        long[] sizes = { 700_001, 3, 600_000, 17 };
        var options = new EmaOptions { Profiles = ProfileSet(set), Threads = 2 };
        using var cleanModel = new SizedModel(torch.ScalarType.Float32, sizes);
        using var badModel = new SizedModel(torch.ScalarType.Float32, sizes);
        SetParameters(cleanModel, 0, sizes);
        SetParameters(badModel, 0, sizes);
        using var clean = new EmaManager<SizedModel>(cleanModel, options);
        using var guarded = new EmaManager<SizedModel>(badModel, options);
        Assert.Equal(2, guarded.UpdateThreads);
        SetParameters(cleanModel, 1, sizes);
        SetParameters(badModel, 1, sizes);
        var before = Shadows(guarded);
        Inject(badModel, 2, 599_999, float.NaN);
        Inject(badModel, 0, 5, float.NegativeInfinity);
        Inject(badModel, 0, 700_000, float.NaN);
        clean.Update(cleanModel);
        guarded.Update(badModel);
        var expected = Shadows(clean);
        var actual = Shadows(guarded);
        var kept = new HashSet<(string, int)> { ("leaves.2.w", 599_999), ("leaves.0.w", 5), ("leaves.0.w", 700_000) };
        foreach (var (key, bits) in expected)
        {
            for (int j = 0; j < bits.Length; j++)
            {
                var want = kept.Contains((key.Item2, j)) ? before[key][j] : bits[j];
                Assert.True(want == actual[key][j], $"{key} [{j}]");
            }
        }
        Assert.Equal(3, guarded.LastUpdate.NonFiniteElements);
        Assert.Equal(new[] { "leaves.0.w", "leaves.2.w" }, guarded.LastUpdate.NonFiniteTensors);
    }

    [Theory]
    [InlineData(torch.ScalarType.Float32, false, false)]
    [InlineData(torch.ScalarType.Float32, true, false)]
    [InlineData(torch.ScalarType.BFloat16, false, false)]
    [InlineData(torch.ScalarType.BFloat16, true, true)]
    [InlineData(torch.ScalarType.Float16, false, true)]
    [InlineData(torch.ScalarType.Float16, true, false)]
    public void ANaNSeededShadowHealsAtTheFirstFiniteStep(torch.ScalarType dtype, bool ops, bool sharded)
    {
        // A shadow seeded with NaN and infinity (an uninitialised module, a bad checkpoint) takes the parameter's value
        // where it is non-finite; every other element is averaged as in a clean run.
        var options = new EmaOptions { Profiles = ProfileSet(2), ForceTorchOps = ops };
        using var cleanModel = new SizedModel(dtype, Sizes);
        using var seededModel = new SizedModel(dtype, Sizes);
        SetParameters(cleanModel, 0, Sizes);
        SetParameters(seededModel, 0, Sizes);
        using var clean = Make(cleanModel, sharded ? Manager.ShardedOne : Manager.Dense, options);
        using var seeded = Make(seededModel, sharded ? Manager.ShardedOne : Manager.Dense, options);
        using (torch.no_grad())
        {
            seeded.ProfileList[0]["leaves.0.w"][4] = float.NaN;
            seeded.ProfileList[1]["leaves.2.w"][7] = float.PositiveInfinity;
        }
        SetParameters(cleanModel, 1, Sizes);
        SetParameters(seededModel, 1, Sizes);
        clean.Update(cleanModel);
        seeded.Update(seededModel);
        var expected = Shadows(clean);
        var actual = Shadows(seeded);
        foreach (var (key, bits) in expected)
        {
            for (int j = 0; j < bits.Length; j++)
            {
                bool healed = key == (0, "leaves.0.w") && j == 4 || key == (1, "leaves.2.w") && j == 7;
                if (!healed)
                {
                    Assert.True(bits[j] == actual[key][j], $"{key} [{j}]");
                    continue;
                }
                using var parameter = seededModel[key.Item2 == "leaves.0.w" ? 0 : 2].narrow(0, j, 1).to_type(seeded.ProfileList[key.Item1][key.Item2].dtype);
                Assert.Equal(ElementBits(parameter)[0], actual[key][j]);
            }
        }
        var report = seeded.LastUpdate;
        Assert.Equal(0, report.NonFiniteElements);
        Assert.Equal(2, report.HealedElements);
        Assert.Equal(new[] { "leaves.0.w", "leaves.2.w" }, report.HealedTensors);
        Assert.Contains("healed 2", report.ToString());
    }

    // A checkpoint whose shadow holds a NaN, loaded after a first step: the heal at the next step is named by its tensor
    // on both paths (the op path reads again which tensors can heal after a load), also later in a packed group.
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void AHealAfterALoadIsNamed(bool ops)
    {
        using var folder = TestPaths.NewTempFolder();
        var options = new EmaOptions { Profiles = ProfileSet(2), ForceTorchOps = ops };
        using var model = new SizedModel(torch.ScalarType.Float32, Sizes);
        // The writer packs its own model (a model packed once stays a view of that manager's buffer).
        using var writerModel = new SizedModel(torch.ScalarType.Float32, Sizes);
        SetParameters(model, 0, Sizes);
        SetParameters(writerModel, 0, Sizes);
        using (var writer = new EmaManager<SizedModel>(writerModel, options))
        {
            writer.Update(writerModel);
            using (torch.no_grad()) writer.ProfileList[1]["leaves.2.w"][11] = float.NaN;
            writer.Save(folder["c"]);
        }
        using var ema = new EmaManager<SizedModel>(model, options);
        SetParameters(model, 1, Sizes);
        ema.Update(model);
        Assert.Equal(0, ema.LastUpdate.HealedElements);
        ema.Load(folder["c"]);
        SetParameters(model, 2, Sizes);
        ema.Update(model);
        Assert.Equal(1, ema.LastUpdate.HealedElements);
        Assert.Equal(new[] { "leaves.2.w" }, ema.LastUpdate.HealedTensors);
        Assert.True(float.IsFinite(ema.ProfileList[1]["leaves.2.w"][11].item<float>()));
        if (ops) Assert.Contains("through TorchSharp ops: 1 packed group(s)", ema.UpdatePath);
        SetParameters(model, 3, Sizes);
        ema.Update(model);
        Assert.Equal(0, ema.LastUpdate.HealedElements);
        Assert.Empty(ema.LastUpdate.HealedTensors);
    }

    [Theory]
    [InlineData(false, Manager.Dense)]
    [InlineData(true, Manager.Dense)]
    [InlineData(false, Manager.ShardedRank0Of2)]
    [InlineData(true, Manager.ShardedRank0Of2)]
    public void TheThrowPolicyWritesNoProfileAndDoesNotAdvance(bool ops, Manager manager)
    {
        var options = new EmaOptions { Profiles = ProfileSet(3), ForceTorchOps = ops, NonFinite = NonFinitePolicy.Throw };
        using var model = new SizedModel(torch.ScalarType.Float32, Sizes);
        SetParameters(model, 0, Sizes);
        using var ema = Make(model, manager, options);
        SetParameters(model, 1, Sizes);
        ema.Update(model);
        SetParameters(model, 2, Sizes);
        // The bad element is in the last tensor, so every earlier unit would have been written by a one-pass check.
        Inject(model, 3, 0, float.NaN);
        var before = Shadows(ema);
        var error = Assert.Throws<NotFiniteNumberException>(() => ema.Update(model));
        Assert.Contains("'leaves.3.w'", error.Message);
        Assert.Contains("step 2", error.Message);
        Assert.Equal(1, ema.Step);
        foreach (var (key, bits) in Shadows(ema)) Assert.Equal(before[key], bits);
        // A clean step after the refusal runs as usual.
        SetParameters(model, 3, Sizes);
        ema.Update(model);
        Assert.Equal(2, ema.Step);
    }

    // The op path names a packed group's healed tensors from what it read before; a step whose report nobody read may
    // have healed what that still counts, so the next heal in the group is named by the group, never by a tensor that
    // healed earlier (here leaves.2.w heals unread at step 1, leaves.0.w at step 2).
    [Fact]
    public void AHealAfterAnUnreadStepIsNotPinnedOnAnEarlierHeal()
    {
        var options = new EmaOptions { Decay = 0.9, ForceTorchOps = true };
        using var model = new SizedModel(torch.ScalarType.Float32, Sizes);
        SetParameters(model, 0, Sizes);
        using var ema = new EmaManager<SizedModel>(model, options);
        using (torch.no_grad())
        {
            ema.ProfileList[0]["leaves.0.w"][3] = float.NaN;
            ema.ProfileList[0]["leaves.2.w"][5] = float.NaN;
        }
        SetParameters(model, 1, Sizes);
        Inject(model, 0, 3, float.NaN);
        ema.Update(model);
        SetParameters(model, 2, Sizes);
        ema.Update(model);
        Assert.Equal(1, ema.LastUpdate.HealedElements);
        Assert.Equal(new[] { "(a packed Float32 group)" }, ema.LastUpdate.HealedTensors);
        Assert.Contains("through TorchSharp ops: 1 packed group(s)", ema.UpdatePath);
        // Read every step from here: a step without a heal names none.
        SetParameters(model, 3, Sizes);
        ema.Update(model);
        Assert.Equal(0, ema.LastUpdate.HealedElements);
        Assert.Empty(ema.LastUpdate.HealedTensors);
    }

    // On the op path the scans that find and name non-finite elements (the throw policy's pre-scan, the report's
    // names) go a slice at a time, so their masks stay bounded: a bad element in the last slice of a large packed
    // tensor (5M elements: three slices of the scan) is found and named.
    [Theory]
    [InlineData(NonFinitePolicy.Throw)]
    [InlineData(NonFinitePolicy.KeepAndHeal)]
    public void TheOpPathFindsANonFiniteElementInTheLastSliceOfALargeTensor(NonFinitePolicy policy)
    {
        const long large = 5_000_037;
        var options = new EmaOptions { Decay = 0.9, ForceTorchOps = true, NonFinite = policy };
        using var model = new SizedModel(torch.ScalarType.Float32, large, 37);
        using var ema = new EmaManager<SizedModel>(model, options);
        ema.Update(model);
        Inject(model, 0, large - 2, float.PositiveInfinity);
        if (policy == NonFinitePolicy.Throw)
        {
            var error = Assert.Throws<NotFiniteNumberException>(() => ema.Update(model));
            Assert.Contains("'leaves.0.w'", error.Message);
            return;
        }
        ema.Update(model);
        Assert.Contains("through TorchSharp ops: 1 packed group(s)", ema.UpdatePath);
        Assert.Equal(1, ema.LastUpdate.NonFiniteElements);
        Assert.Equal(new[] { "leaves.0.w" }, ema.LastUpdate.NonFiniteTensors);
    }

    [Fact]
    public void AllowBlendsTheNaNInAsBefore()
    {
        using var model = new SizedModel(torch.ScalarType.Float32, Sizes);
        using var ema = new EmaManager<SizedModel>(model, new EmaOptions { Decay = 0.9, NonFinite = NonFinitePolicy.Allow });
        Inject(model, 1, 2, float.NaN);
        ema.Update(model);
        Assert.True(float.IsNaN(ema["leaves.1.w"][2].item<float>()));
        Assert.Equal(0, ema.LastUpdate.NonFiniteElements);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void TheFirstNonFiniteStepIsToldOnceWithItsReport(bool ops)
    {
        var told = new List<string>();
        var options = new EmaOptions { Decay = 0.9, ForceTorchOps = ops, OnFirstNonFinite = r => told.Add($"{r.Step} {r.NonFiniteElements} {string.Join(",", r.NonFiniteTensors)}") };
        using var model = new SizedModel(torch.ScalarType.Float32, Sizes);
        using var ema = new EmaManager<SizedModel>(model, options);
        for (int step = 1; step <= 6; step++)
        {
            SetParameters(model, step, Sizes);
            if (step >= 4) Inject(model, 0, 1, float.NaN);
            if (step == 4) Inject(model, 0, 2, float.NaN);
            ema.Update(model);
            // On the op path the counts are read (and the callback made) when the report is read.
            _ = ema.LastUpdate.NonFiniteElements;
        }
        Assert.Equal(new[] { "4 2 leaves.0.w" }, told);
        Assert.Equal(1, ema.LastUpdate.NonFiniteElements);
    }

    [Theory]
    [InlineData(torch.ScalarType.Float32, false, 1)]
    [InlineData(torch.ScalarType.Float32, false, 2)]
    [InlineData(torch.ScalarType.BFloat16, false, 2)]
    [InlineData(torch.ScalarType.Float16, false, 1)]
    [InlineData(torch.ScalarType.Float64, false, 1)]
    [InlineData(torch.ScalarType.Float32, true, 2)]
    [InlineData(torch.ScalarType.BFloat16, true, 1)]
    public void TheRmsDistanceIsTheShadowsDistanceToTheLiveWeights(torch.ScalarType dtype, bool ops, int set)
    {
        var options = new EmaOptions { Profiles = ProfileSet(set), ForceTorchOps = ops, ReportDistance = true };
        using var model = new SizedModel(dtype, Sizes);
        SetParameters(model, 0, Sizes);
        using var ema = new EmaManager<SizedModel>(model, options);
        for (int step = 1; step <= 3; step++)
        {
            SetParameters(model, step, Sizes);
            if (step == 3)
            {
                // Non-finite on both sides at one element (kept as it is), and a parameter alone at another: the
                // distance is over the finite elements on every path, not NaN.
                Inject(model, 2, 9, float.NaN);
                Inject(model, 0, 1, float.PositiveInfinity);
                using var _ = torch.no_grad();
                for (int k = 0; k < set; k++)
                {
                    using var cell = ema.Profiles[k]["leaves.2.w"].narrow(0, 9, 1);
                    cell.fill_(float.NaN);
                }
            }
            ema.Update(model);
        }
        for (int k = 0; k < set; k++)
        {
            double sum = 0;
            long n = 0;
            for (int i = 0; i < Sizes.Length; i++)
            {
                var shadow = TensorValues.Doubles(ema.Profiles[k][$"leaves.{i}.w"]);
                var live = TensorValues.Doubles(model[i]);
                for (int j = 0; j < live.Length; j++)
                {
                    if (!double.IsFinite(live[j])) continue;
                    sum += (shadow[j] - live[j]) * (shadow[j] - live[j]);
                    n++;
                }
            }
            double expected = Math.Sqrt(sum / n);
            Assert.True(expected > 0.1);
            Assert.InRange(ema.LastUpdate.RmsDistance(k), expected * (1 - 1e-5), expected * (1 + 1e-5));
        }
        using var plain = new EmaManager<SizedModel>(model, new EmaOptions { Decay = 0.9 });
        plain.Update(model);
        Assert.True(double.IsNaN(plain.LastUpdate.RmsDistance(0)));
    }

    [Theory]
    [InlineData(true, 1, torch.ScalarType.Float32)]
    [InlineData(false, 1, torch.ScalarType.Float32)]
    [InlineData(true, 2, torch.ScalarType.Float32)]
    [InlineData(false, 2, torch.ScalarType.Float32)]
    [InlineData(true, 1, torch.ScalarType.BFloat16)]
    [InlineData(false, 2, torch.ScalarType.BFloat16)]
    public void EveryBlockShapeOfTheCpuKernelGivesTheElementRule(bool pack, int profiles, torch.ScalarType dtype)
    {
        // Lengths around the kernels' rounds (64 elements for one shadow, 32 for the pair kernel of two) and 8-element
        // vectors, so that non-finite values and heals fall in a round, in the vector remainder and in the scalar tail;
        // tensor by tensor, and packed (one entry of 848 elements with the alignment padding: rounds and a remainder).
        // fp32 shadows of fp32 and of bf16 parameters (the same kernels, another parameter load), with the distance on.
        long[] sizes = [1, 7, 8, 9, 63, 64, 65, 72, 127, 129, 200, 16];
        using var model = new SizedModel(dtype, sizes);
        SetParameters(model, 0, sizes);
        double[] decays = profiles == 1 ? [0.75] : [0.75, 0.5];
        using var ema = new EmaManager<SizedModel>(model, new EmaOptions
        {
            Profiles = decays.Select((d, k) => new EmaProfileOptions($"p{k}", EmaSchedule.Constant(d))).ToArray(),
            PackParameters = pack,
            ReportDistance = true,
        });
        SetParameters(model, 1, sizes);
        var poisoned = new List<(int Leaf, long Element)>();
        for (int i = 0; i < sizes.Length; i++)
        {
            // The last element (tail or remainder), and one inside the first round where there is one.
            poisoned.Add((i, sizes[i] - 1));
            if (sizes[i] > 40) poisoned.Add((i, 37));
        }
        foreach (var (leaf, element) in poisoned) Inject(model, leaf, element, leaf % 2 == 0 ? float.NaN : float.NegativeInfinity);
        // Non-finite shadow elements heal from their finite parameters (in every profile): in a round (element 100 of
        // the 200), in a vector remainder (elements 64-71 of the 72), in a scalar tail (the 7-element leaf).
        (int Leaf, long Element)[] healing = [(10, 100), (7, 66), (1, 2)];
        using (torch.no_grad())
        {
            foreach (var profile in ema.Profiles)
            {
                foreach (var (leaf, element) in healing)
                {
                    using var cell = profile[$"leaves.{leaf}.w"].narrow(0, element, 1);
                    cell.fill_(float.NaN);
                }
            }
        }
        var before = ema.Profiles.Select(profile => sizes.Select((_, i) => profile[$"leaves.{i}.w"].data<float>().ToArray()).ToArray()).ToArray();
        ema.Update(model);
        for (int k = 0; k < profiles; k++)
        {
            double sum = 0;
            long finite = 0;
            for (int i = 0; i < sizes.Length; i++)
            {
                var p = TensorValues.Doubles(model[i]).Select(v => (float)v).ToArray();
                var actual = ema.Profiles[k][$"leaves.{i}.w"].data<float>().ToArray();
                for (int j = 0; j < p.Length; j++)
                {
                    float e = before[k][i][j];
                    float expected = !float.IsFinite(p[j]) ? e : !float.IsFinite(e) ? p[j] : Lerp.Of(e, p[j], decays[k]);
                    Assert.True(BitConverter.SingleToInt32Bits(expected) == BitConverter.SingleToInt32Bits(actual[j]),
                        $"profile {k} leaves.{i}.w[{j}]: {actual[j]}, expected {expected}");
                    if (!float.IsFinite(p[j])) continue;
                    sum += ((double)actual[j] - p[j]) * ((double)actual[j] - p[j]);
                    finite++;
                }
            }
            double rms = Math.Sqrt(sum / finite);
            Assert.InRange(ema.LastUpdate.RmsDistance(k), rms * (1 - 1e-5), rms * (1 + 1e-5));
        }
        Assert.Equal(poisoned.Count, ema.LastUpdate.NonFiniteElements);
        Assert.Equal(profiles * healing.Length, ema.LastUpdate.HealedElements);
    }

    [Fact]
    public void UpdatingAndReadingTheReportAllocatesNothingEvenOnABadStep()
    {
        // The guard, the distance and a non-finite element every step: a steady-state update and a
        // read of every report member but ToString allocate no managed memory (two threads, chunks merged).
        long[] sizes = { 700_001, 3, 600_000, 17 };
        using var model = new SizedModel(torch.ScalarType.Float32, sizes);
        using var ema = new EmaManager<SizedModel>(model, new EmaOptions { Profiles = ProfileSet(2), Threads = 2, ReportDistance = true });
        double sink = 0;
        // The NaN stays in the parameter, so every step meets it (injecting allocates TorchSharp wrappers).
        Inject(model, 2, 5, float.NaN);
        void Step()
        {
            ema.Update(model);
            var r = ema.LastUpdate;
            sink += r.Step + r.NonFiniteElements + r.HealedElements + r.NonFiniteTensors.Count + r.HealedTensors.Count + r.Decay(1) + r.RmsDistance(0);
        }
        for (int i = 0; i < 50; i++) Step();
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 10; i++) Step();
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Equal(0, allocated);
        Assert.Equal(1, ema.LastUpdate.NonFiniteElements);
        Assert.Equal(new[] { "leaves.2.w" }, ema.LastUpdate.NonFiniteTensors);
        Assert.True(sink > 0);
    }
}

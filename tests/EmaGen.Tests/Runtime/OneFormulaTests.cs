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
/// One update formula on every path. The same values go through the packed raw kernels (threaded for the large tensor),
/// the per-tensor raw kernels, a fused two-profile update and the sharded manager, which must all give the same bits
/// (one set of kernels), and through the TorchSharp-op path (forced on the CPU: what a CUDA run executes, packed and per
/// tensor: LibTorch's <c>lerp_</c>, which may fuse the multiply-add), which must stay within a stated bound of them:
/// for fp32, bf16, fp16 and fp64 parameters and for low-precision shadows.
/// </summary>
public sealed class OneFormulaTests
{
    // Odd sizes (vector tails), a 1.1M-element tensor (split across threads), a scalar-sized one.
    private static readonly long[] Sizes = { 1, 37, 300, 1_100_003 };

    public static IEnumerable<object[]> Cases() => new[]
    {
        new object[] { ScalarType.Float32, false },
        new object[] { ScalarType.BFloat16, false },
        new object[] { ScalarType.Float16, false },
        new object[] { ScalarType.Float64, false },
        new object[] { ScalarType.BFloat16, true },
        new object[] { ScalarType.Float16, true },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void RawPathsGiveTheSameBitsAndTheOpPathStaysWithinTheBound(ScalarType dtype, bool lowPrecisionShadow)
    {
        torch.manual_seed(77);
        var schedule = EmaSchedule.Constant(0.9);
        var paths = new (string Name, EmaOptions Options)[]
        {
            ("packed raw", new EmaOptions { Schedule = schedule, LowPrecisionShadow = lowPrecisionShadow, Threads = 2 }),
            ("per-tensor raw", new EmaOptions { Schedule = schedule, LowPrecisionShadow = lowPrecisionShadow, PackParameters = false, Threads = 1 }),
            ("packed torch ops", new EmaOptions { Schedule = schedule, LowPrecisionShadow = lowPrecisionShadow, ForceTorchOps = true }),
            ("per-tensor torch ops", new EmaOptions { Schedule = schedule, LowPrecisionShadow = lowPrecisionShadow, ForceTorchOps = true, PackParameters = false }),
            ("fused profiles", new EmaOptions
            {
                LowPrecisionShadow = lowPrecisionShadow,
                Profiles = [new("same", schedule), new("other", EmaSchedule.PowerFunction(0.05))],
            }),
        };
        var models = paths.Select(_ => new SizedModel(dtype, Sizes)).ToList();
        var shardedModel = new SizedModel(dtype, Sizes);
        try
        {
            foreach (var m in models.Skip(1).Append(shardedModel)) CopyValues(models[0], m);
            var managers = paths.Select((p, i) => new EmaManager<SizedModel>(models[i], p.Options)).ToList();
            using var sharded = new ShardedEmaManager<SizedModel>(shardedModel, 0, 1, new EmaOptions { Schedule = schedule, LowPrecisionShadow = lowPrecisionShadow });
            try
            {
                // The largest parameter magnitude fed, per tensor: every shadow is a convex combination of them.
                var largest = Enumerable.Range(0, Sizes.Length).Select(i => TensorValues.Doubles(models[0][i]).Max(Math.Abs)).ToArray();
                for (int step = 0; step < 4; step++)
                {
                    using (torch.no_grad())
                    {
                        for (int i = 0; i < Sizes.Length; i++)
                        {
                            using var fresh = torch.randn(Sizes[i]).to_type(dtype);
                            foreach (var m in models.Append(shardedModel)) m[i].copy_(fresh);
                            largest[i] = Math.Max(largest[i], TensorValues.Doubles(fresh).Max(Math.Abs));
                        }
                    }
                    for (int k = 0; k < managers.Count; k++) managers[k].Update(models[k]);
                    sharded.Update(shardedModel);
                }
                // The forced paths really left the raw kernels: no packed group ran as a raw pass.
                Assert.Contains("0 packed group(s) ran as one pass each", managers[2].UpdatePath);
                Assert.Contains("1 packed", managers[2].UpdatePath);
                Assert.Contains("0 packed group(s) ran as one pass each", managers[3].UpdatePath);
                Assert.Contains("1 packed group(s) ran as one pass each", managers[0].UpdatePath);
                // ...and went through the TorchSharp-op backend: one blend per packed group, or one per tensor.
                Assert.Contains("through TorchSharp ops: 1 packed group(s) and 0 tensor(s)", managers[2].UpdatePath);
                Assert.Contains($"through TorchSharp ops: 0 packed group(s) and {Sizes.Length} tensor(s)", managers[3].UpdatePath);
                Assert.DoesNotContain("TorchSharp ops", managers[0].UpdatePath);
                // Bound: with M the largest parameter magnitude fed (|ema| ≤ M, |p − ema| ≤ 2M), each path's step is
                // within ε·(|ema'| + 2·|w·(p − ema)|) ≤ 3εM of the exact one (ε: the shadow dtype's machine epsilon,
                // which also covers a low-precision shadow rounding a one-ulp fp32 difference), and older differences
                // shrink by the decay: after n steps the two paths differ by at most 6·n·ε·M.
                const int steps = 4;
                for (int i = 0; i < Sizes.Length; i++)
                {
                    string name = $"leaves.{i}.w";
                    var expected = TensorValues.Bits(managers[0][name]);
                    foreach (int k in new[] { 1, 4 })
                    {
                        Assert.True(expected.SequenceEqual(TensorValues.Bits(managers[k][name])), $"{paths[k].Name} differs from {paths[0].Name} on {name} ({dtype}, low-precision shadow {lowPrecisionShadow})");
                    }
                    Assert.True(expected.SequenceEqual(TensorValues.Bits(sharded[name])), $"the sharded manager differs on {name} ({dtype})");
                    var raw = TensorValues.Doubles(managers[0][name]);
                    double bound = 6 * steps * Epsilon(managers[0][name].dtype) * largest[i];
                    foreach (int k in new[] { 2, 3 })
                    {
                        double worst = raw.Zip(TensorValues.Doubles(managers[k][name]), (a, b) => Math.Abs(a - b)).Max();
                        Assert.True(worst <= bound, $"{paths[k].Name} is {worst:G3} from the raw kernels on {name} ({dtype}), over {bound:G3}");
                    }
                }
                // The comparison is not vacuous: the shadows moved away from the first parameters.
                Assert.False(TensorValues.Bits(managers[0]["leaves.3.w"]).SequenceEqual(TensorValues.Bits(models[0][3])));
            }
            finally
            {
                foreach (var m in managers) m.Dispose();
            }
        }
        finally
        {
            foreach (var m in models) m.Dispose();
            shardedModel.Dispose();
        }
    }

    private static double Epsilon(ScalarType shadow) => shadow switch
    {
        ScalarType.Float64 => Math.Pow(2, -52),
        ScalarType.BFloat16 => Math.Pow(2, -7),
        ScalarType.Float16 => Math.Pow(2, -10),
        _ => Math.Pow(2, -23),
    };

    private static void CopyValues(SizedModel from, SizedModel to)
    {
        using var _ = torch.no_grad();
        for (int i = 0; i < from.Count; i++) to[i].copy_(from[i]);
    }
}

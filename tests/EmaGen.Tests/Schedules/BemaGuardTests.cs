using System;
using System.Linq;
using EmaGen.Tests.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace EmaGen.Tests.Schedules;

/// <summary>
/// BEMA under the non-finite guard: θ₀ taken at a copy step keeps its value where the live weight is not finite (as the
/// EMA does), and a correction term that is not finite (θ₀ from an uninitialised weight, or a broken live weight) is
/// left out of the read-out, so the corrected weights read the EMA there instead of NaN; with the guard off, today's
/// arithmetic.
/// </summary>
public sealed class BemaGuardTests
{
    private static readonly long[] Sizes = { 300, 70 };

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void AThetaZeroTakenFromANanWeightGivesNoCorrectionThere(bool forceTorchOps)
    {
        torch.manual_seed(5);
        using var model = new SizedModel(ScalarType.Float32, Sizes);
        SetElement(model[0], 17, float.NaN);
        using var ema = new EmaManager<SizedModel>(model, new EmaOptions
        {
            Profiles = [new EmaProfileOptions("ema", EmaSchedule.Constant(0.9)), new EmaProfileOptions("bema", EmaSchedule.Bema())],
            ForceTorchOps = forceTorchOps,
        });
        // Finite from the first update on: the EMA heals there; θ₀, taken at bind, keeps the NaN.
        SetElement(model[0], 17, 0.25f);
        for (int step = 0; step < 5; step++)
        {
            Move(model);
            ema.Update(model);
        }
        string name = ema.TrackedNames.First();
        Assert.True(float.IsNaN(ema.AnchorOf(1, name).data<float>()[17]));
        using var copy = new SizedModel(ScalarType.Float32, Sizes);
        ema.Profiles[1].CopyTo(copy);
        var corrected = copy[0].data<float>().ToArray();
        var shadow = ema.Profiles[1][name].data<float>().ToArray();
        var theta = model[0].data<float>().ToArray();
        var anchor = ema.AnchorOf(1, name).data<float>().ToArray();
        float alpha = (float)ema.AlphaOf(1);
        Assert.All(corrected, v => Assert.True(float.IsFinite(v)));
        // The broken element reads the EMA (healed from the first finite step); every other one ema + α·(θ − θ₀),
        // each operation rounded once in fp32.
        Assert.Equal(shadow[17], corrected[17]);
        for (int j = 0; j < corrected.Length; j++)
        {
            if (j == 17) continue;
            float diff = theta[j] - anchor[j];
            float scaled = diff * alpha;
            Assert.Equal(scaled + shadow[j], corrected[j]);
        }
    }

    [Fact]
    public void ANanAtTheLastCopyStepLeavesThetaZeroAsItWas()
    {
        torch.manual_seed(6);
        using var model = new SizedModel(ScalarType.Float32, Sizes);
        using var ema = new EmaManager<SizedModel>(model, new EmaOptions
        {
            Profiles = [new EmaProfileOptions("bema", EmaSchedule.StartAfter(3, EmaSchedule.Bema()))],
        });
        string name = ema.TrackedNames.First();
        float before = 0;
        for (int step = 1; step <= 6; step++)
        {
            Move(model);
            if (step == 3)
            {
                // The burn-in's last step (a copy): the live weight is broken at element 4.
                before = ema.AnchorOf(0, name).data<float>()[4];
                SetElement(model[0], 4, float.PositiveInfinity);
            }
            if (step == 4) SetElement(model[0], 4, 0.5f);
            ema.Update(model);
            if (step == 3)
            {
                var anchor = ema.AnchorOf(0, name).data<float>().ToArray();
                Assert.Equal(before, anchor[4]);
                Assert.Equal(model[0].data<float>()[5], anchor[5]);
            }
        }
        using var copy = new SizedModel(ScalarType.Float32, Sizes);
        ema.CopyTo(copy);
        Assert.All(copy[0].data<float>().ToArray(), v => Assert.True(float.IsFinite(v)));
    }

    [Fact]
    public void WithTheGuardOffTheReadOutIsTodaysArithmetic()
    {
        torch.manual_seed(7);
        using var model = new SizedModel(ScalarType.Float32, Sizes);
        SetElement(model[0], 17, float.NaN);
        using var ema = new EmaManager<SizedModel>(model, new EmaOptions
        {
            Profiles = [new EmaProfileOptions("bema", EmaSchedule.Bema())],
            NonFinite = NonFinitePolicy.Allow,
        });
        Move(model);
        ema.Update(model);
        using var copy = new SizedModel(ScalarType.Float32, Sizes);
        ema.CopyTo(copy);
        Assert.True(float.IsNaN(copy[0].data<float>()[17]));
    }

    private static void SetElement(Tensor parameter, long index, float value)
    {
        using var _ = torch.no_grad();
        using var element = parameter.narrow(0, index, 1);
        element.fill_(value);
    }

    private static void Move(SizedModel model)
    {
        using var _ = torch.no_grad();
        for (int i = 0; i < model.Count; i++)
        {
            using var noise = torch.randn_like(model[i]).mul_(0.05f);
            model[i].add_(noise);
        }
    }
}

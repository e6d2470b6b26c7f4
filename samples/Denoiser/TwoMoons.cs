using System;
using TorchSharp;
using static TorchSharp.torch;

namespace EmaGen.Samples.Denoiser;

/// <summary>The two-moons point cloud (as scikit-learn's make_moons), standardised to zero mean and unit variance per axis.</summary>
public static class TwoMoons
{
    private const float Noise = 0.05f;

    // make_moons' points have mean (0.5, 0.25) and std ≈ (0.87, 0.50); standardising keeps the diffusion's unit-variance prior sensible.
    private static readonly float[] Mean = { 0.5f, 0.25f };
    private static readonly float[] Std = { 0.87f, 0.50f };

    /// <summary><paramref name="count"/> points, [count, 2], drawn from <paramref name="random"/>.</summary>
    public static Tensor Sample(int count, Random random)
    {
        var data = new float[count * 2];
        for (int i = 0; i < count; i++)
        {
            double angle = Math.PI * random.NextDouble();
            bool upper = (i & 1) == 0;
            double x = upper ? Math.Cos(angle) : 1 - Math.Cos(angle);
            double y = upper ? Math.Sin(angle) : 0.5 - Math.Sin(angle);
            data[2 * i] = (float)((x + Noise * Gaussian(random) - Mean[0]) / Std[0]);
            data[2 * i + 1] = (float)((y + Noise * Gaussian(random) - Mean[1]) / Std[1]);
        }
        return torch.tensor(data, new long[] { count, 2 });
    }

    internal static double Gaussian(Random random)
    {
        double u1 = 1.0 - random.NextDouble();
        double u2 = random.NextDouble();
        return Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2.0 * Math.PI * u2);
    }
}

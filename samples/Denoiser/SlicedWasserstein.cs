using System;

namespace EmaGen.Samples.Denoiser;

/// <summary>
/// Sliced Wasserstein-1 distance between two equally sized 2-D point sets (Rabin et al. 2011): the mean over random
/// unit directions of the 1-D Wasserstein-1 distance of the projections, which for equal sizes is the mean absolute
/// difference of the sorted projections. Lower is better; 0 for identical sets.
/// </summary>
public static class SlicedWasserstein
{
    public static double Distance(float[] a, float[] b, int directions, int seed)
    {
        if (a.Length != b.Length || a.Length % 2 != 0) throw new ArgumentException("point sets must be [n, 2] of equal n");
        int n = a.Length / 2;
        var random = new Random(seed);
        var pa = new double[n];
        var pb = new double[n];
        double total = 0;
        for (int d = 0; d < directions; d++)
        {
            double angle = 2 * Math.PI * random.NextDouble();
            double cx = Math.Cos(angle), cy = Math.Sin(angle);
            for (int i = 0; i < n; i++)
            {
                pa[i] = a[2 * i] * cx + a[2 * i + 1] * cy;
                pb[i] = b[2 * i] * cx + b[2 * i + 1] * cy;
            }
            Array.Sort(pa);
            Array.Sort(pb);
            double sum = 0;
            for (int i = 0; i < n; i++) sum += Math.Abs(pa[i] - pb[i]);
            total += sum / n;
        }
        return total / directions;
    }
}

using System;
using System.Linq;
using static TorchSharp.torch;

namespace EmaGen.Tests.Support;

/// <summary>
/// The reference the numeric tests hold every update path to: the EMA of the same (rounded) parameters computed in
/// float64, with the largest shadow value and the largest parameter-to-average distance seen, which the bound
/// min(n, 1/w)·u·(max|e| + 3·w·max|p − e|) is made of (docs/performance.md, "The bound every path keeps").
/// </summary>
internal sealed class Float64Ema
{
    private readonly double _decay;
    private readonly double[] _values;
    private double _maxShadow;
    private double _maxGap;

    public Float64Ema(double decay, double[] start)
    {
        _decay = decay;
        // max|e| is taken over the averages the updates make: the start is the shadow exactly (no rounding yet), and
        // counting it would widen the bound wherever the parameters start largest.
        _values = (double[])start.Clone();
    }

    /// <summary>One update from parameters <paramref name="p"/>.</summary>
    public void Step(double[] p)
    {
        for (int j = 0; j < _values.Length; j++)
        {
            _maxGap = Math.Max(_maxGap, Math.Abs(p[j] - _values[j]));
            _values[j] = _decay * _values[j] + (1 - _decay) * p[j];
            _maxShadow = Math.Max(_maxShadow, Math.Abs(_values[j]));
        }
    }

    /// <summary>1.01 times the bound after <paramref name="steps"/> updates of a shadow of <paramref name="shadowType"/>.</summary>
    public double Bound(int steps, ScalarType shadowType)
    {
        double w = 1 - _decay;
        return 1.01 * Math.Min(steps, 1 / w) * UnitRoundoff(shadowType) * (_maxShadow + 3 * w * _maxGap);
    }

    /// <summary>The largest distance of <paramref name="shadow"/> from this EMA.</summary>
    public double Distance(Tensor shadow) => TensorValues.Doubles(shadow).Zip(_values, (a, b) => Math.Abs(a - b)).Max();

    /// <summary>The largest distance of parameters <paramref name="p"/> from this EMA (what a bound must be far below to say anything).</summary>
    public double DistanceFrom(double[] p) => p.Zip(_values, (a, b) => Math.Abs(a - b)).Max();

    private static double UnitRoundoff(ScalarType dtype) => dtype switch
    {
        ScalarType.BFloat16 => Math.Pow(2, -8),
        ScalarType.Float16 => Math.Pow(2, -11),
        ScalarType.Float64 => Math.Pow(2, -53),
        _ => Math.Pow(2, -24),
    };
}

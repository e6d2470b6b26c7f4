using System.Linq;
using TorchSharp;
using static TorchSharp.torch;

namespace EmaGen.Tests.Support;

/// <summary>A tensor's values as the numeric tests compare them.</summary>
internal static class TensorValues
{
    /// <summary>Raw bytes, so that -0.0 vs 0.0 and NaN payloads count as differences.</summary>
    public static byte[] Bits(Tensor t)
    {
        using var c = t.detach().contiguous().cpu();
        return c.bytes.ToArray();
    }

    /// <summary>Every element, widened exactly to float64.</summary>
    public static double[] Doubles(Tensor t)
    {
        using var d = t.detach().to_type(ScalarType.Float64).cpu();
        return d.data<double>().ToArray();
    }
}

using System;

namespace EmaGen;

/// <summary>What the public types holding a shape (or offsets) share: element count, value equality, text.</summary>
internal static class Shapes
{
    /// <summary>Number of elements of a tensor of <paramref name="shape"/> (1 for a scalar); throws on overflow.</summary>
    public static long Numel(long[] shape)
    {
        long n = 1;
        foreach (var d in shape) n = checked(n * d);
        return n;
    }

    public static bool Equal(long[] a, long[] b) => a.AsSpan().SequenceEqual(b);

    public static int Hash(long[] shape)
    {
        var hash = new HashCode();
        foreach (var d in shape) hash.Add(d);
        return hash.ToHashCode();
    }

    /// <summary><c>[2, 3]</c>.</summary>
    public static string Text(long[] shape) => "[" + string.Join(", ", shape) + "]";
}

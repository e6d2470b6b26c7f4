using System.Linq;
using EmaGen.Dcp;
using EmaGen.Tests.Models;
using TorchSharp;
using Xunit;

namespace EmaGen.Tests.Runtime;

/// <summary>The public value-like types that hold arrays compare the arrays element by element, not by reference.</summary>
public sealed class ValueEqualityTests
{
    [Fact]
    public void ChunksAndTensorEntriesCompareTheirArrays()
    {
        var chunk = new DcpChunk(new long[] { 0, 2 }, new long[] { 4, 2 });
        var same = new DcpChunk(new long[] { 0, 2 }, new long[] { 4, 2 });
        AssertEqual(chunk, same);
        Assert.NotEqual(chunk, chunk.WithOffsets(new long[] { 0, 3 }));

        var entry = new DcpTensorEntry("w", "float32", new long[] { 4, 4 }, new[] { chunk });
        var alike = new DcpTensorEntry("w", "float32", new long[] { 4, 4 }, new[] { same });
        AssertEqual<DcpEntry>(entry, alike);
        Assert.NotEqual<DcpEntry>(entry, entry.With(size: new long[] { 4, 5 }));
        Assert.NotEqual<DcpEntry>(entry, entry.With(dType: "float16"));
        Assert.NotEqual<DcpEntry>(entry, entry.With(chunks: new[] { chunk, chunk }));
        Assert.NotEqual<DcpEntry>(entry, entry.WithKey("v"));
        AssertEqual<DcpEntry>(new DcpBytesEntry("step"), new DcpBytesEntry("step"));
        Assert.NotEqual<DcpEntry>(new DcpBytesEntry("w"), new DcpTensorEntry("w", "float32", new long[0], new[] { new DcpChunk(new long[0], new long[0]) }));
    }

    [Fact]
    public void ShardsCompareTheirArraysAndTheirTensorObject()
    {
        using var local = torch.zeros(2, 3);
        using var other = torch.zeros(2, 3);
        var shard = new DcpShard("w", local, new long[] { 4, 3 }, new long[] { 2, 0 });
        AssertEqual(shard, new DcpShard("w", local, new long[] { 4, 3 }, new long[] { 2, 0 }));
        Assert.NotEqual(shard, new DcpShard("w", local, new long[] { 4, 3 }, new long[] { 0, 0 }));
        Assert.NotEqual(shard, new DcpShard("w", local, new long[] { 4, 3 }, new long[] { 2, 0 }, replicated: true));
        Assert.NotEqual(shard, new DcpShard("w", other, new long[] { 4, 3 }, new long[] { 2, 0 }));
    }

    [Fact]
    public void ParameterInfosOfTwoManagersOverOneModelShapeAreEqual()
    {
        using var first = new BareParameters(reflection: false);
        using var second = new BareParameters(reflection: false);
        using var a = new EmaManager<BareParameters>(first);
        using var b = new EmaManager<BareParameters>(second);
        Assert.Equal(a.Parameters, b.Parameters);
        Assert.Equal(a.Parameters.Select(p => p.GetHashCode()), b.Parameters.Select(p => p.GetHashCode()));
        Assert.False(ReferenceEquals(a.Parameters[0].Shape, b.Parameters[0].Shape));
        Assert.NotEqual(a.Parameters[1], a.Parameters[1] with { Shape = new long[] { 2, 3 } });
        Assert.Contains("Shape = [2, 2]", a.Parameters[1].ToString());
    }

    private static void AssertEqual<T>(T x, T y) where T : class
    {
        Assert.Equal(x, y);
        Assert.True(x.Equals((object)y));
        Assert.Equal(x.GetHashCode(), y.GetHashCode());
    }
}

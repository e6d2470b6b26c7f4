using System;
using System.Linq;
using EmaGen.Tests.Models;
using TorchSharp;
using Xunit;

namespace EmaGen.Tests.Sharding;

/// <summary>Shard boxes against LibTorch's own torch.chunk, and the generated shard map.</summary>
public sealed class ShardLayoutTests
{
    [Fact]
    public void ChunksEqualTorchChunkForManySizes()
    {
        for (long d = 0; d <= 40; d++)
        {
            for (int n = 1; n <= 9; n++)
            {
                using var rows = torch.arange(d);
                var chunks = rows.chunk(n);
                long covered = 0;
                for (int r = 0; r < n; r++)
                {
                    var (offset, size) = ShardLayout.Chunk(d, n, r);
                    if (r < chunks.Length)
                    {
                        Assert.Equal(chunks[r].numel(), size);
                        if (size > 0) Assert.Equal(chunks[r][0].item<long>(), offset);
                    }
                    else
                    {
                        // torch.chunk returns fewer chunks; FSDP2 gives the remaining ranks empty shards at offset D.
                        Assert.Equal((d, 0L), (offset, size));
                    }
                    covered += size;
                }
                Assert.Equal(d, covered);
                foreach (var c in chunks) c.Dispose();
            }
        }
        Assert.Equal(new[] { (0L, 2L), (2L, 2L), (4L, 1L), (5L, 0L) }, Enumerable.Range(0, 4).Select(r => ShardLayout.Chunk(5, 4, r)));
    }

    [Fact]
    public void BoxesSplitTheShardDimensionOnly()
    {
        var (offsets, sizes) = ShardLayout.Box(new long[] { 5, 3 }, 1, 2, 1);
        Assert.Equal(new long[] { 0, 2 }, offsets);
        Assert.Equal(new long[] { 5, 1 }, sizes);
        (offsets, sizes) = ShardLayout.Box(new long[] { 5, 3 }, ShardLayout.Replicated, 4, 3);
        Assert.Equal(new long[] { 0, 0 }, offsets);
        Assert.Equal(new long[] { 5, 3 }, sizes);
        (offsets, sizes) = ShardLayout.Box(Array.Empty<long>(), 0, 4, 2);
        Assert.Empty(sizes);
        Assert.Throws<ArgumentOutOfRangeException>(() => ShardLayout.Box(new long[] { 5 }, 1, 2, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => ShardLayout.Chunk(5, 2, 2));
    }

    [Fact]
    public void GeneratedShardMapReachesTheLayout()
    {
        using var model = new ShardMapModel();
        using var ema = new EmaManager<ShardMapModel>(model, new EmaOptions { TrackBuffers = true });
        var dims = ema.Parameters.Concat(ema.Buffers).ToDictionary(p => p.Name, p => p.ShardDim);
        Assert.Equal(0, dims["byRows.weight"]);
        Assert.Equal(0, dims["byRows.bias"]);
        Assert.Equal(1, dims["byColumns.weight"]);
        Assert.Equal(1, dims["byColumns.bias"]); // a 1-D bias has no dimension 1: a sharded manager rejects it by name
        Assert.Equal(ShardLayout.Replicated, dims["scale"]);
        Assert.Equal(0, dims["vector"]);
        Assert.Equal(ShardLayout.Replicated, dims["counter"]);

        using var replicated = new ReplicatedByDefault();
        using var ema2 = new EmaManager<ReplicatedByDefault>(replicated);
        Assert.Equal(ShardLayout.Replicated, ema2.Parameters.Single(p => p.Name == "whole").ShardDim);
        Assert.Equal(0, ema2.Parameters.Single(p => p.Name == "split").ShardDim);
    }
}

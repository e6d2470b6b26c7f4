using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Linq;
using EmaGen.Dcp;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;

namespace EmaGen.Tests.Dcp;

/// <summary>
/// A checkpoint with a data file over 2 GiB: a 2.26 GB tensor item (its <c>_StorageInfo.length</c> needs 8 pickle bytes)
/// followed by a small item at a byte offset past 2 GiB. Rows are read back in pieces and compared byte for byte. The
/// memory bound is on what the writer and the reader add: the whole tensor is made resident before the baseline (an
/// untouched page read by the writer becomes resident on this project's machines), and each phase's peak growth is
/// bounded on its own, far below the tensor, so a writer or reader that copied it would fail.
/// </summary>
[Collection(ProcessWideState.Name)]
public sealed class LargeCheckpointTests
{
    private const long Rows = 540;
    private const long RowElements = 1 << 20;       // 4 MiB of float32 per row: rows 511/512 straddle byte 2^31
    private const long PhaseBudget = 256L << 20;    // per phase, whatever the tensor's size

    private readonly ITestOutputHelper _output;

    public LargeCheckpointTests(ITestOutputHelper output) => _output = output;

    [Fact]
    public void ADataFileOver2GiBWritesAndReadsBackInPieces()
    {
        using var folder = TestPaths.NewTempFolder();
        var clock = Stopwatch.StartNew();
        using var big = torch.empty(Rows, RowElements);
        EmaGen.Fuzz.Memory.MakeResident(big, -1.0);
        long[] marked = { 0, 511, 512, 539 };
        foreach (var row in marked)
        {
            using var r = big[row];
            using var values = torch.arange(RowElements, dtype: torch.ScalarType.Float32).add_(row * 1000.0);
            r.copy_(values);
        }
        using var small = torch.arange(6, dtype: torch.ScalarType.Float32);

        long savePeak = EmaGen.Fuzz.Memory.PeakGrowth(() =>
            DcpWriter.Save(folder["ckpt"], new List<KeyValuePair<string, object?>> { new("big", big), new("after", small), new("step", 3L) }));
        var written = clock.Elapsed;

        long readPeak = EmaGen.Fuzz.Memory.PeakGrowth(() =>
        {
            var reader = DcpReader.Open(folder["ckpt"]);
            var bigItem = reader.Metadata.LocationOf("big", ((DcpTensorEntry)reader.Metadata.Find("big")!).Chunks[0]);
            var afterItem = reader.Metadata.LocationOf("after", ((DcpTensorEntry)reader.Metadata.Find("after")!).Chunks[0]);
            Assert.True(bigItem.Length > int.MaxValue, $"the big item is {bigItem.Length} bytes");
            Assert.True(afterItem.Offset > int.MaxValue, $"the small item starts at {afterItem.Offset}");
            Assert.True(new FileInfo(Path.Combine(folder["ckpt"], bigItem.RelativePath)).Length > 1L << 31);

            using (var after = reader.ReadTensor("after")) Assert.Equal(small.data<float>().ToArray(), after.data<float>().ToArray());
            Assert.Equal(3L, reader.ReadValue("step"));
            foreach (var (start, count) in new[] { (0L, 2L), (510L, 4L), (536L, 4L) })
            {
                using var rows = reader.ReadSlice("big", new[] { start, 0L }, new[] { count, RowElements });
                using var expected = big.narrow(0, start, count);
                Assert.True(DcpRoundTripTests.Bytes(expected).AsSpan().SequenceEqual(DcpRoundTripTests.Bytes(rows)), $"rows {start}..{start + count}");
            }
        });
        _output.WriteLine($"tensor {big.NumberOfElements * 4} bytes, resident before the baseline; write {written.TotalSeconds:F1} s, "
            + $"total {clock.Elapsed.TotalSeconds:F1} s; peak RSS growth: save {savePeak / 1e6:F0} MB, piece reads {readPeak / 1e6:F0} MB "
            + $"(budget {PhaseBudget >> 20} MiB each)");
        Assert.True(savePeak <= PhaseBudget, $"the save grew peak RSS by {savePeak} bytes (budget {PhaseBudget})");
        Assert.True(readPeak <= PhaseBudget, $"the piece reads grew peak RSS by {readPeak} bytes (budget {PhaseBudget})");
    }
}

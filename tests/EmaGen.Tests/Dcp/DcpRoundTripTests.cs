using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using EmaGen.Dcp;
using EmaGen.Dcp.Pickle;
using EmaGen.Dcp.Zip;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace EmaGen.Tests.Dcp;

/// <summary>Write, then read back: bit-identical tensors for every dtype, shapes of every kind, values, several files.</summary>
public sealed class DcpRoundTripTests
{
    public static IEnumerable<object[]> DTypes() => new[]
    {
        ScalarType.Float32, ScalarType.Float64, ScalarType.Float16, ScalarType.BFloat16, ScalarType.Int64, ScalarType.Int32,
        ScalarType.Int16, ScalarType.Int8, ScalarType.Byte, ScalarType.Bool, ScalarType.ComplexFloat32, ScalarType.ComplexFloat64,
    }.Select(t => new object[] { t });

    [Theory]
    [MemberData(nameof(DTypes))]
    public void EveryDTypeRoundTripsBitExactly(ScalarType dtype)
    {
        using var folder = TestPaths.NewTempFolder();
        torch.manual_seed(11);
        var tensors = new Dictionary<string, Tensor>
        {
            ["matrix"] = Random(dtype, 3, 5),
            ["zero_dim"] = Random(dtype),
            ["empty"] = torch.zeros(new long[] { 0, 4 }, dtype),
            ["odd"] = Random(dtype, 7),
            ["noncontiguous"] = Random(dtype, 4, 3).t(),
        };
        DcpWriter.Save(folder["ckpt"], tensors.Select(kv => new KeyValuePair<string, object?>(kv.Key, kv.Value)));
        var reader = DcpReader.Open(folder["ckpt"]);
        foreach (var (key, expected) in tensors)
        {
            using var actual = reader.ReadTensor(key);
            Assert.Equal(expected.dtype, actual.dtype);
            Assert.Equal(expected.shape, actual.shape);
            Assert.Equal(Bytes(expected), Bytes(actual));
        }
    }

    [Fact]
    public void ValuesRoundTripAndFilesSpreadItems()
    {
        using var folder = TestPaths.NewTempFolder();
        var state = new List<KeyValuePair<string, object?>>
        {
            new("step", 42L), new("lr", 0.001), new("name", "ema"), new("flag", true), new("nothing", null),
            new("list", new List<object?> { 1L, 2.5, "x" }),
            new("dict", new Dictionary<string, object?> { ["a"] = 1L, ["b"] = new List<object?>() }),
            new("w", torch.arange(10, dtype: ScalarType.Float32)), new("v", torch.ones(3)),
        };
        DcpWriter.Save(folder["ckpt"], state, new DcpWriteOptions { FilesPerRank = 3 });
        Assert.Equal(3, Directory.GetFiles(folder["ckpt"], "*.distcp").Length);
        var reader = DcpReader.Open(folder["ckpt"]);
        Assert.Equal(42L, reader.ReadValue("step"));
        Assert.Equal(0.001, reader.ReadValue("lr"));
        Assert.Equal("ema", reader.ReadValue("name"));
        Assert.Equal(true, reader.ReadValue("flag"));
        Assert.Null(reader.ReadValue("nothing"));
        Assert.Equal(new object?[] { 1L, 2.5, "x" }, (List<object?>)reader.ReadValue("list")!);
        var dict = (PickleDict)reader.ReadValue("dict")!;
        Assert.Equal(1L, dict["a"]);
        Assert.Equal(Enumerable.Range(0, 10).Select(i => (float)i), reader.ReadTensor("w").data<float>().ToArray());
        Assert.Equal(state.Select(kv => kv.Key).Order(), reader.Entries.Select(e => e.Key).Order());
        Assert.Equal(DcpNaming.PyTorch23, reader.Metadata.Naming);
        Assert.Equal("1.0.0", reader.Metadata.Version);
    }

    [Fact]
    public void LegacyNamingIsReadBack()
    {
        using var folder = TestPaths.NewTempFolder();
        DcpWriter.Save(folder["ckpt"], new[] { new KeyValuePair<string, object?>("w", torch.ones(2)) }, new DcpWriteOptions { Naming = DcpNaming.PyTorch20 });
        var reader = DcpReader.Open(folder["ckpt"]);
        Assert.Equal(DcpNaming.PyTorch20, reader.Metadata.Naming);
        var bytes = File.ReadAllBytes(Path.Combine(folder["ckpt"], ".metadata"));
        var text = System.Text.Encoding.ASCII.GetString(bytes);
        Assert.Contains("torch.distributed._shard.sharded_tensor.metadata\nTensorProperties", text);
        Assert.DoesNotContain("\nStorageMeta\n", text);
    }

    [Fact]
    public void Zip64FieldsAreWrittenAndRead()
    {
        using var stream = new MemoryStream();
        using var tensor = torch.arange(100, dtype: ScalarType.Int64);
        WriteTensor(stream, tensor, forceZip64: true);
        var bytes = stream.ToArray();
        // Every local header of a forced-ZIP64 record carries the ZIP64 extra field (id 1) and 0xFFFFFFFF markers.
        Assert.True(IndexOf(bytes, new byte[] { 0x01, 0x00, 0x10, 0x00 }) > 0);
        Assert.True(IndexOf(bytes, new byte[] { 0x50, 0x4b, 0x06, 0x06 }) > 0);
        var archive = TorchArchiveReader.Open(stream, 0, bytes.Length, "zip64 test");
        Assert.Equal("archive", archive.Prefix);
        using var back = TorchTensors.Adopt((HostTensor)TorchSaveCodec.ReadItem(archive, "zip64 test", TensorExpectation.Any)!);
        Assert.Equal(tensor.data<long>().ToArray(), back.data<long>().ToArray());
    }

    [Fact]
    public void RecordsAreAlignedTo64Bytes()
    {
        using var stream = new MemoryStream();
        using var ones = torch.ones(5);
        WriteTensor(stream, ones);
        var archive = TorchArchiveReader.Open(stream, 0, stream.Length, "alignment test");
        Assert.All(archive.Records, r => Assert.Equal(0, r.DataOffset % 64));
        Assert.Equal(new[] { ".format_version", ".storage_alignment", "byteorder", "data.pkl", "data/0", "version" }, archive.Records.Select(r => r.Name).Order());
    }

    [Fact]
    public void SliceReadsOnlyTheOverlap()
    {
        using var folder = TestPaths.NewTempFolder();
        using var full = torch.arange(20, dtype: ScalarType.Float32).reshape(5, 4);
        DcpWriter.Save(folder["ckpt"], new[] { new KeyValuePair<string, object?>("w", full) });
        var reader = DcpReader.Open(folder["ckpt"]);
        using var slice = reader.ReadSlice("w", new long[] { 3, 1 }, new long[] { 2, 2 });
        Assert.Equal(new float[] { 13, 14, 17, 18 }, slice.data<float>().ToArray());
        Assert.Throws<ArgumentException>(() => reader.ReadSlice("w", new long[] { 4, 0 }, new long[] { 2, 4 }));
    }

    [Fact]
    public void ARankReadsOnlyTheCheckedBlocksOfItsRows()
    {
        using var folder = TestPaths.NewTempFolder();
        using var big = torch.arange(4000 * 1000, dtype: ScalarType.Float32).reshape(4000, 1000);   // 16 MB, 16 sealed blocks
        DcpWriter.Save(folder["ckpt"], new[] { new KeyValuePair<string, object?>("w", big) });
        var reader = DcpReader.Open(folder["ckpt"]);
        var (offsets, sizes) = ShardLayout.Box(big.shape, 0, 8, 5);             // rows 2500..2999 of one saved chunk
        using var part = reader.ReadSlice("w", offsets, sizes);
        using var expected = big.narrow(0, offsets[0], sizes[0]);
        Assert.Equal(expected.contiguous().data<float>().ToArray(), part.data<float>().ToArray());
        long rowBytes = sizes[0] * 1000 * 4;                                      // 2,000,000 bytes
        Assert.InRange(reader.BytesRead, rowBytes, rowBytes + 2 * ItemSeal.DefaultBlockSize);   // whole blocks, each CRC-checked
        Assert.True(reader.BytesRead < big.numel() * 4 / 4);

        // A box that also cuts columns reads its rows' blocks (one byte range) and cuts the columns in memory.
        long before = reader.BytesRead;
        using var corner = reader.ReadSlice("w", new long[] { 10, 5 }, new long[] { 2, 3 });
        Assert.Equal(new float[] { 10005, 10006, 10007, 11005, 11006, 11007 }, corner.data<float>().ToArray());
        Assert.Equal(ItemSeal.DefaultBlockSize, reader.BytesRead - before);
    }

    internal static Tensor Random(ScalarType dtype, params long[] shape) => dtype switch
    {
        ScalarType.Bool => torch.randint(0, 2, shape).to_type(ScalarType.Bool),
        ScalarType.Byte or ScalarType.Int8 or ScalarType.Int16 or ScalarType.Int32 or ScalarType.Int64 => torch.randint(-100, 100, shape).abs().to_type(dtype),
        ScalarType.ComplexFloat32 or ScalarType.ComplexFloat64 => torch.randn(shape, dtype),
        _ => torch.randn(shape).to_type(dtype),
    };

    internal static byte[] Bytes(Tensor t)
    {
        using var c = t.contiguous();
        return c.bytes.ToArray();
    }

    // One tensor as one torch.save item, through the save path's own adapter and encoder.
    private static void WriteTensor(Stream stream, Tensor tensor, bool forceZip64 = false)
    {
        var chunk = TensorChunks.Whole("w", tensor);
        using var bytes = chunk.Bytes.Open();
        TorchSaveWriter.WriteTensor(stream, chunk.DType, chunk.Sizes, bytes, forceZip64: forceZip64);
    }

    private static int IndexOf(byte[] haystack, byte[] needle)
    {
        for (int i = 0; i <= haystack.Length - needle.Length; i++)
        {
            if (haystack.AsSpan(i, needle.Length).SequenceEqual(needle)) return i;
        }
        return -1;
    }
}

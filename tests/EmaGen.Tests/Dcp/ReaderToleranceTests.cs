using System;
using System.IO;
using System.IO.Compression;
using System.Linq;
using EmaGen.Dcp;
using EmaGen.Dcp.Pickle;
using EmaGen.Dcp.Zip;
using TorchSharp;
using Xunit;

namespace EmaGen.Tests.Dcp;

/// <summary>torch.save records written differently from EmaGen's own (dcp-format.md §8): the reader must still take them.</summary>
public sealed class ReaderToleranceTests
{
    [Fact]
    public void BigEndianStorageIsSwapped()
    {
        var data = new byte[] { 0, 0, 0, 1, 0, 0, 1, 0, 0xFF, 0xFF, 0xFF, 0xFE }; // 1, 256, -2 as big-endian int32
        using var t = Read(TensorPickle("IntStorage", 3, 0, new long[] { 3 }, new long[] { 1 }), data, byteorder: "big");
        Assert.Equal(new[] { 1, 256, -2 }, t.data<int>().ToArray());
    }

    [Fact]
    public void StorageOffsetAndStridesAreHonoured()
    {
        var floats = Enumerable.Range(0, 10).Select(i => (float)i).ToArray();
        var data = floats.SelectMany(BitConverter.GetBytes).ToArray();
        // A 2x2 view starting at element 3 with strides (4, 2): elements 3, 5, 7, 9.
        using var t = Read(TensorPickle("FloatStorage", 10, 3, new long[] { 2, 2 }, new long[] { 4, 2 }), data);
        Assert.Equal(new float[] { 3, 5, 7, 9 }, t.data<float>().ToArray());
    }

    [Fact]
    public void RebuildTensorV3WithAnUntypedStorageReadsSupportedDTypes()
    {
        var data = new float[] { 1.5f, -2.5f }.SelectMany(BitConverter.GetBytes).ToArray();
        using var t = Read(TensorPickle("UntypedStorage", 8, 0, new long[] { 2 }, new long[] { 1 }, v3DType: "float32"), data);
        Assert.Equal(new[] { 1.5f, -2.5f }, t.data<float>().ToArray());
    }

    [Fact]
    public void DTypesTorchSharpLacksAreNamedInTheError()
    {
        var e = Assert.Throws<CheckpointFormatException>(() =>
            Read(TensorPickle("UntypedStorage", 2, 0, new long[] { 2 }, new long[] { 1 }, v3DType: "float8_e4m3fn"), new byte[2]));
        Assert.Contains("float8_e4m3fn", e.Message);
        Assert.Contains("not supported by TorchSharp", e.Message);
    }

    [Fact]
    public void DeflatedRecordsAndOtherArchivePrefixesAreRead()
    {
        var pickle = TensorPickle("LongStorage", 2, 0, new long[] { 2 }, new long[] { 1 });
        var stream = new MemoryStream();
        using (var zip = new ZipArchive(stream, ZipArchiveMode.Create, leaveOpen: true))
        {
            Add(zip, "model/data.pkl", pickle);
            Add(zip, "model/data/0", new long[] { 7, -9 }.SelectMany(BitConverter.GetBytes).ToArray());
            Add(zip, "model/.data/version", "3\n"u8.ToArray());
        }
        var archive = TorchArchiveReader.Open(stream, 0, stream.Length, "deflated");
        Assert.Equal("model", archive.Prefix);
        Assert.All(archive.Records, r => Assert.Equal(8, r.Method));
        using var t = TorchTensors.Adopt((HostTensor)TorchSaveCodec.ReadItem(archive, "deflated", TensorExpectation.Any)!);
        Assert.Equal(new long[] { 7, -9 }, t.data<long>().ToArray());
    }

    [Fact]
    public void ViewsReachingPastTheStorageAreRejected()
    {
        var e = Assert.Throws<CheckpointFormatException>(() =>
            Read(TensorPickle("FloatStorage", 4, 2, new long[] { 3 }, new long[] { 1 }), new byte[16]));
        Assert.Contains("reaches element 4 of a 4-element storage", e.Message);
    }

    private static void Add(ZipArchive zip, string name, byte[] bytes)
    {
        using var entry = zip.CreateEntry(name, CompressionLevel.Optimal).Open();
        entry.Write(bytes);
    }

    private static byte[] TensorPickle(string storage, long numel, long offset, long[] size, long[] stride, string? v3DType = null)
    {
        var p = new PickleWriter();
        p.Global("torch._utils", v3DType is null ? "_rebuild_tensor_v2" : "_rebuild_tensor_v3").Mark();
        p.Mark().String("storage").Global(storage == "UntypedStorage" ? "torch.storage" : "torch", storage).String("0").String("cpu").Int(numel).Tuple().BinPersId();
        p.Int(offset).IntTuple(size).IntTuple(stride).Bool(false).Global("collections", "OrderedDict").EmptyTuple().Reduce();
        if (v3DType is not null) p.Global("torch", v3DType);
        return p.Tuple().Reduce().Finish();
    }

    private static torch.Tensor Read(byte[] pickle, byte[] data, string byteorder = "little")
    {
        var stream = new MemoryStream();
        var writer = new TorchArchiveWriter(stream);
        writer.AddRecord("data.pkl", pickle);
        writer.AddText("byteorder", byteorder);
        writer.AddRecord("data/0", data);
        writer.AddText("version", "3\n");
        writer.Finish();
        var archive = TorchArchiveReader.Open(stream, 0, stream.Length, "crafted");
        return TorchTensors.Adopt((HostTensor)TorchSaveCodec.ReadItem(archive, "crafted", TensorExpectation.Any)!);
    }
}

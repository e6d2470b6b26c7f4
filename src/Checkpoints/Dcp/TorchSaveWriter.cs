using System;
using System.Collections;
using System.Collections.Generic;
using System.IO;
using EmaGen.Dcp.Pickle;
using EmaGen.Dcp.Zip;

namespace EmaGen.Dcp;

/// <summary>
/// Encodes the items of a DCP data file: one torch.save archive per tensor chunk or plain value (dcp-format.md
/// §3.2-3.4). Tensor data is streamed from the chunk's own memory; <see cref="TorchSaveCodec"/> decodes.
/// </summary>
internal static class TorchSaveWriter
{
    /// <summary>
    /// Writes a chunk as a torch.save archive: storage offset 0, C-order strides, storage key "0"; with a
    /// <paramref name="seal"/> (save id, key, offsets) also the <see cref="ItemSeal"/> record with the data's block CRCs.
    /// </summary>
    internal static unsafe void WriteTensor(Stream output, ChunkDType dtype, long[] shape, HostBytes data, ItemSeal? seal = null, bool forceZip64 = false)
    {
        long numel = 1;
        foreach (var d in shape) numel = checked(numel * d);
        if (checked(numel * dtype.ElementSize) != data.Length)
        {
            throw new ArgumentException($"a {dtype.Name} chunk of shape ({string.Join(", ", shape)}) has {numel * dtype.ElementSize} bytes, its data {data.Length}");
        }

        var pickle = new PickleWriter();
        pickle.Global("torch._utils", "_rebuild_tensor_v2").Mark();
        pickle.Mark().String("storage").Global("torch", dtype.StorageClass).String("0").String("cpu").Int(numel).Tuple().BinPersId();
        pickle.Int(0).IntTuple(shape).IntTuple(ContiguousStrides(shape)).Bool(false);
        pickle.Global("collections", "OrderedDict").EmptyTuple().Reduce();
        pickle.Tuple().Reduce();

        var archive = new TorchArchiveWriter(output, forceZip64: forceZip64);
        WriteHeaderRecords(archive, pickle.Finish());
        int blockSize = seal?.BlockSize ?? ItemSeal.DefaultBlockSize;
        archive.AddRecord("data/0", (byte*)data.Pointer, data.Length, blockSize, out var blocks);
        archive.AddText("version", "3\n");
        if (seal is not null) archive.AddRecord(ItemSeal.RecordName, (seal with { BlockCrcs = blocks }).Encode());
        archive.Finish();
    }

    /// <summary>Writes a plain value (null, bool, integer, double, string, list, tuple, string-keyed dict) as a BYTE_IO item.</summary>
    internal static void WriteValue(Stream output, object? value, ItemSeal? seal = null)
    {
        var pickle = new PickleWriter();
        WritePlain(pickle, value, 0);
        var archive = new TorchArchiveWriter(output);
        WriteHeaderRecords(archive, pickle.Finish());
        archive.AddText("version", "3\n");
        if (seal is not null) archive.AddRecord(ItemSeal.RecordName, seal.Encode());
        archive.Finish();
    }

    internal static long[] ContiguousStrides(long[] shape)
    {
        var strides = new long[shape.Length];
        long stride = 1;
        for (int i = shape.Length - 1; i >= 0; i--)
        {
            strides[i] = stride;
            stride *= Math.Max(1, shape[i]);
        }
        return strides;
    }

    private static void WriteHeaderRecords(TorchArchiveWriter archive, byte[] pickle)
    {
        archive.AddRecord("data.pkl", pickle);
        archive.AddText(".format_version", "1");
        archive.AddText(".storage_alignment", "64");
        archive.AddText("byteorder", "little");
    }

    private const int MaxValueDepth = 64;

    private static void WritePlain(PickleWriter p, object? value, int depth)
    {
        if (depth > MaxValueDepth) throw new ArgumentException($"value nests deeper than {MaxValueDepth}");
        switch (value)
        {
            case null: p.None(); break;
            case bool b: p.Bool(b); break;
            case int i: p.Int(i); break;
            case long l: p.Int(l); break;
            case double d: p.Float(d); break;
            case float f: p.Float(f); break;
            case string s: p.String(s); break;
            case PickleTuple t:
                p.Mark();
                foreach (var item in t.Items) WritePlain(p, item, depth + 1);
                p.Tuple();
                break;
            case IDictionary<string, object?> dict:
                p.EmptyDict();
                if (dict.Count > 0)
                {
                    p.Mark();
                    foreach (var (k, v) in dict)
                    {
                        p.String(k);
                        WritePlain(p, v, depth + 1);
                    }
                    p.SetItems();
                }
                break;
            case IList list:
                p.EmptyList();
                if (list.Count > 0)
                {
                    p.Mark();
                    foreach (var item in list) WritePlain(p, item, depth + 1);
                    p.Appends();
                }
                break;
            default:
                throw new ArgumentException($"a value of type {value.GetType().Name} cannot be stored as a checkpoint value");
        }
    }
}

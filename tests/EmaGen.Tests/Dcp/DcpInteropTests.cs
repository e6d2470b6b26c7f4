using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text.Json.Nodes;
using EmaGen.Dcp;
using EmaGen.Dcp.Pickle;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace EmaGen.Tests.Dcp;

/// <summary>Interop with real PyTorch (Debian's 1.13): it loads what EmaGen writes, and EmaGen reads what it wrote.</summary>
public sealed class DcpInteropTests
{
    [Theory]
    [InlineData(DcpNaming.PyTorch23)]
    [InlineData(DcpNaming.PyTorch20)]
    public void RealPyTorchLoadsEmaGenCheckpoints(DcpNaming naming)
    {
        using var folder = TestPaths.NewTempFolder();
        torch.manual_seed(21);
        var tensors = new Dictionary<string, Tensor>
        {
            ["model.layers.0.weight"] = torch.randn(4, 3),
            ["model.layers.0.bias"] = torch.randn(4).to_type(ScalarType.BFloat16),
            ["f16"] = torch.randn(2, 2).to_type(ScalarType.Float16),
            ["f64"] = torch.randn(3, dtype: ScalarType.Float64),
            ["i64"] = torch.tensor(new long[] { 1, -2, 3_000_000_000 }),
            ["i32"] = torch.tensor(new[] { 7, -8 }),
            ["i16"] = torch.tensor(new short[] { 300, -300 }),
            ["i8"] = torch.tensor(new sbyte[] { -5, 5 }),
            ["u8"] = torch.tensor(new byte[] { 0, 255 }),
            ["b"] = torch.tensor(new[] { true, false, true }),
            ["zero_dim"] = torch.tensor(2.5f),
            ["empty"] = torch.zeros(0, 3),
            ["transposed_source"] = torch.arange(6, dtype: ScalarType.Float32).reshape(2, 3).t(),
        };
        var values = new Dictionary<string, object?> { ["step"] = 1234L, ["lr"] = 0.25, ["name"] = "ema" };
        var state = tensors.Select(kv => new KeyValuePair<string, object?>(kv.Key, kv.Value)).Concat(values).ToList();
        DcpWriter.Save(folder["ckpt"], state, new DcpWriteOptions { Naming = naming, FilesPerRank = 2 });

        var expected = new JsonObject();
        foreach (var (key, t) in tensors) expected[key] = Describe(t);
        foreach (var (key, v) in values) expected[key] = new JsonObject { ["value"] = JsonValue.Create(v) };
        File.WriteAllText(folder["expected.json"], expected.ToJsonString());

        var output = PythonTorch.Run("load_with_torch.py", folder["ckpt"], folder["expected.json"]);
        Assert.Contains($"OK {tensors.Count} tensor records and {tensors.Count + values.Count} keys match", output);
    }

    [Theory]
    [InlineData("per_item")]
    [InlineData("single_file")]
    public void ReadsCheckpointsPyTorch113Wrote(string folder)
    {
        var expected = Expected()["nodist"]!.AsObject();
        var reader = DcpReader.Open(TestPaths.Fixture(Path.Combine("dcp-torch113", folder)));
        Assert.Equal(DcpNaming.PyTorch113, reader.Metadata.Naming);
        Assert.Equal(expected.Select(kv => kv.Key).Order(), reader.Entries.Select(e => e.Key).Order());
        foreach (var (key, spec) in expected)
        {
            if (spec is JsonObject tensor && tensor.ContainsKey("dtype"))
            {
                using var actual = reader.ReadTensor(key);
                AssertTensor(tensor, actual, key);
            }
        }
        Assert.Equal(42L, reader.ReadValue("step"));
        Assert.Equal(0.001, reader.ReadValue("lr"));
        var meta = (PickleDict)reader.ReadValue("meta")!;
        Assert.Equal("adam", meta["name"]);
        Assert.Equal(new object?[] { 0.9, 0.999 }, ((PickleTuple)meta["betas"]!).Items);
    }

    [Fact]
    public void ReadsTheTwoRankShardedCheckpointAndReshards()
    {
        var reader = DcpReader.Open(TestPaths.Fixture("dcp-torch113/sharded_2rank"));
        var entry = reader.TensorEntry("sharded.weight");
        Assert.Equal(new long[] { 5, 3 }, entry.Size);
        Assert.Equal(2, entry.Chunks.Count);
        using var full = reader.ReadTensor("sharded.weight");
        Assert.Equal(Enumerable.Range(0, 15).Select(i => (float)i), full.data<float>().ToArray());
        // A box across both saved chunks (rows 2-3) reads the overlap of each.
        using var slice = reader.ReadSlice("sharded.weight", new long[] { 2, 0 }, new long[] { 2, 3 });
        Assert.Equal(new float[] { 6, 7, 8, 9, 10, 11 }, slice.data<float>().ToArray());
        Assert.Equal(new float[] { 10, 20, 30 }, reader.ReadTensor("replicated.bias").data<float>().ToArray());
        // Resharded into 1 and 3 ranks (torch.chunk boxes along dimension 0).
        foreach (int ranks in new[] { 1, 3 })
        {
            for (int rank = 0; rank < ranks; rank++)
            {
                var (offsets, sizes) = ShardLayout.Box(new long[] { 5, 3 }, 0, ranks, rank);
                using var part = reader.ReadSlice("sharded.weight", offsets, sizes);
                var expected = Enumerable.Range((int)(offsets[0] * 3), (int)(sizes[0] * 3)).Select(i => (float)i);
                Assert.Equal(expected, part.numel() == 0 ? Array.Empty<float>() : part.data<float>().ToArray());
            }
        }
        Assert.Equal(7L, reader.ReadValue("step"));
    }

    private static JsonObject Expected() =>
        JsonNode.Parse(File.ReadAllText(TestPaths.Fixture("dcp-torch113/expected.json")))!.AsObject();

    private static void AssertTensor(JsonObject spec, Tensor actual, string key)
    {
        Assert.Equal(spec["dtype"]!.GetValue<string>(), TorchDTypes.NameOf(actual.dtype));
        Assert.Equal(spec["shape"]!.AsArray().Select(n => n!.GetValue<long>()), actual.shape);
        var expected = spec["values"]!.AsArray().Select(n => n!.GetValue<double>()).ToArray();
        using var asDouble = actual.to_type(ScalarType.Float64);
        Assert.True(expected.SequenceEqual(Flat<double>(asDouble)), $"{key}: values differ");
    }

    // TorchSharp's accessor throws on empty tensors.
    private static T[] Flat<T>(Tensor t) where T : unmanaged => t.numel() == 0 ? Array.Empty<T>() : t.data<T>().ToArray();

    private static JsonObject Describe(Tensor t)
    {
        using var contiguous = t.contiguous();
        JsonArray values;
        if (t.dtype == ScalarType.Bool)
        {
            values = new JsonArray(Flat<bool>(contiguous).Select(b => (JsonNode)JsonValue.Create(b ? 1 : 0)).ToArray());
        }
        else if (t.dtype is ScalarType.Int64 or ScalarType.Int32 or ScalarType.Int16 or ScalarType.Int8 or ScalarType.Byte)
        {
            using var wide = contiguous.to_type(ScalarType.Int64);
            values = new JsonArray(Flat<long>(wide).Select(v => (JsonNode)JsonValue.Create(v)).ToArray());
        }
        else
        {
            using var wide = contiguous.to_type(ScalarType.Float64);
            values = new JsonArray(Flat<double>(wide).Select(v => (JsonNode)JsonValue.Create(v)).ToArray());
        }
        return new JsonObject
        {
            ["dtype"] = TorchDTypes.NameOf(t.dtype),
            ["shape"] = new JsonArray(t.shape.Select(d => (JsonNode)JsonValue.Create(d)).ToArray()),
            ["values"] = values,
        };
    }
}

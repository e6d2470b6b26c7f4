using System;
using System.IO;
using System.Linq;
using EmaGen.Dcp;
using EmaGen.Tests.Support;
using Xunit;

namespace EmaGen.Tests.Sharding;

/// <summary>
/// Real rank processes (the sample's --world-size launcher): 2, 3 and 4 processes each keep a shard of the EMA and
/// write one checkpoint; read back whole, it equals the EMA of a single-process dense run, bit for bit.
/// </summary>
public sealed class MultiProcessTests
{
    [Fact]
    public void RankProcessesWriteTheDenseEmaTogether()
    {
        using var folder = TestPaths.NewTempFolder();
        var sample = Path.Combine(AppContext.BaseDirectory, "Denoiser.dll");
        string[] common = { "--steps", "25", "--threads", "1", "--seed", "5" };

        var dense = ProcessRunner.Run("dotnet", folder.Path, 300_000, new[] { sample, "--out", folder["w1"] }.Concat(common).ToArray());
        Assert.True(dense.ExitCode == 0, dense.Output);
        var expected = DcpReader.Open(Path.Combine(folder["w1"], "ema"));

        foreach (int world in new[] { 2, 3, 4 })
        {
            var run = ProcessRunner.Run("dotnet", folder.Path, 300_000,
                new[] { sample, "--world-size", world.ToString(), "--out", folder[$"w{world}"] }.Concat(common).ToArray());
            Assert.True(run.ExitCode == 0, run.Output);
            Assert.Contains($"one PyTorch DCP checkpoint from {world} ranks", run.Output);
            var sharded = DcpReader.Open(Path.Combine(folder[$"w{world}"], "ema"));
            var tensors = expected.Entries.OfType<DcpTensorEntry>().ToList();
            Assert.Equal(tensors.Select(e => e.Key), sharded.Entries.OfType<DcpTensorEntry>().Select(e => e.Key));
            Assert.Contains(sharded.Entries.OfType<DcpTensorEntry>(), e => e.Chunks.Count == world);
            foreach (var entry in tensors)
            {
                using var a = expected.ReadTensor(entry.Key);
                using var b = sharded.ReadTensor(entry.Key);
                Assert.True(a.contiguous().bytes.SequenceEqual(b.contiguous().bytes), $"{entry.Key} differs with {world} ranks");
            }
            Assert.Equal(25L, sharded.ReadValue("ema._emagen.step"));
            if (world == 4)
            {
                AssertPyTorchLoads(folder, Path.Combine(folder["w4"], "ema"), expected);
                AssertReshardedLoadsMatch(Path.Combine(folder["w4"], "ema"), expected);
            }
        }
    }

    [Fact]
    public void RankProcessesWithTwoProfilesAndPostHocSnapshotsMatchTheDenseRun()
    {
        using var folder = TestPaths.NewTempFolder();
        var sample = Path.Combine(AppContext.BaseDirectory, "Denoiser.dll");
        string[] common =
        {
            "--steps", "20", "--threads", "1", "--seed", "6", "--profile", "narrow=power:0.05", "--profile", "wide=power:0.10",
            "--posthoc-every", "10",
        };
        var dense = ProcessRunner.Run("dotnet", folder.Path, 300_000, new[] { sample, "--out", folder["w1"] }.Concat(common).ToArray());
        Assert.True(dense.ExitCode == 0, dense.Output);
        var run = ProcessRunner.Run("dotnet", folder.Path, 300_000, new[] { sample, "--world-size", "2", "--out", folder["w2"] }.Concat(common).ToArray());
        Assert.True(run.ExitCode == 0, run.Output);
        Assert.Contains("EMA post-hoc 0.075", run.Output);

        foreach (var (dir, count) in new[] { ("ema", 2), ("posthoc-ema-0.075", 1), (Path.Combine("posthoc", "step-0000000020"), 2) })
        {
            var expected = DcpReader.Open(Path.Combine(folder["w1"], dir));
            var sharded = DcpReader.Open(Path.Combine(folder["w2"], dir));
            var tensors = expected.Entries.OfType<DcpTensorEntry>().ToList();
            Assert.Equal(count * 33, tensors.Count);
            Assert.Equal(tensors.Select(e => e.Key).Order(), sharded.Entries.OfType<DcpTensorEntry>().Select(e => e.Key).Order());
            foreach (var entry in tensors)
            {
                using var a = expected.ReadTensor(entry.Key);
                using var b = sharded.ReadTensor(entry.Key);
                Assert.True(a.contiguous().bytes.SequenceEqual(b.contiguous().bytes), $"{dir}: {entry.Key} differs with 2 ranks");
            }
        }
    }

    // The folder 4 processes wrote, loaded by 1, 2 and 3 ranks: each rank's shards equal the dense EMA's boxes.
    private static void AssertReshardedLoadsMatch(string checkpoint, DcpReader dense)
    {
        foreach (int ranks in new[] { 1, 2, 3 })
        {
            for (int rank = 0; rank < ranks; rank++)
            {
                using var model = new EmaGen.Samples.Denoiser.DenoiserModel();
                using var ema = new ShardedEmaManager<EmaGen.Samples.Denoiser.DenoiserModel>(model, rank, ranks, new EmaOptions { Decay = 0.995 });
                ema.Load(checkpoint);
                foreach (var t in dense.Entries.OfType<DcpTensorEntry>())
                {
                    var (offsets, sizes) = ShardLayout.Box(t.Size, 0, ranks, rank);
                    using var box = dense.ReadSlice(t.Key, offsets, sizes);
                    var local = ema[t.Key["ema.".Length..]];
                    Assert.True(box.bytes.SequenceEqual(local.contiguous().bytes), $"{t.Key}: rank {rank} of {ranks} differs");
                }
            }
        }
    }

    // PyTorch 1.13 loads the folder 4 processes wrote; every tensor must equal the dense run's.
    private static void AssertPyTorchLoads(TestPaths.TempFolder folder, string checkpoint, DcpReader dense)
    {
        var json = new System.Text.Json.Nodes.JsonObject();
        foreach (var t in dense.Entries.OfType<DcpTensorEntry>())
        {
            using var value = dense.ReadTensor(t.Key);
            json[t.Key] = new System.Text.Json.Nodes.JsonObject
            {
                ["dtype"] = t.DType,
                ["shape"] = new System.Text.Json.Nodes.JsonArray(t.Size.Select(d => (System.Text.Json.Nodes.JsonNode)d).ToArray()),
                ["values"] = new System.Text.Json.Nodes.JsonArray(value.data<float>().ToArray().Select(v => (System.Text.Json.Nodes.JsonNode)(double)v).ToArray()),
            };
        }
        foreach (var v in dense.Entries.OfType<DcpBytesEntry>())
        {
            System.Text.Json.Nodes.JsonNode? node = dense.ReadValue(v.Key) switch
            {
                long l => l,
                double d => d,
                string text => text,
                var other => throw new InvalidOperationException($"unexpected value {other} under {v.Key}"),
            };
            json[v.Key] = new System.Text.Json.Nodes.JsonObject { ["value"] = node };
        }
        File.WriteAllText(folder["expected4.json"], json.ToJsonString());
        var output = PythonTorch.Run("load_with_torch.py", checkpoint, folder["expected4.json"]);
        Assert.Contains("tensor records and", output);
    }
}

using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text.Json.Nodes;
using System.Threading.Tasks;
using EmaGen.Cli;
using EmaGen.Dcp;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;

namespace EmaGen.Tests.Sharding;

/// <summary>Collective-free multi-rank saves: one checkpoint from N writers, read back into any number of ranks, and by PyTorch.</summary>
public sealed class ShardedCheckpointTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task FourRanksWriteOneCheckpointThatReshardsAndPyTorchLoads()
    {
        using var folder = TestPaths.NewTempFolder();
        var target = folder["ckpt"];
        using var w = torch.arange(15, dtype: torch.ScalarType.Float32).reshape(5, 3);
        using var v = torch.arange(7, dtype: torch.ScalarType.Float32) * 0.5f;
        using var r = torch.tensor(new[] { 10f, 20f, 30f });
        const int world = 4;

        await Task.WhenAll(Enumerable.Range(0, world).Select(rank => Task.Run(() =>
        {
            var me = new RankInfo(rank, world);
            var shards = new List<DcpShard> { Slice("w", w, 0, me), Slice("v", v, 0, me), new DcpShard("r", r, r.shape, new long[1], replicated: true) };
            SaveRank(target, "save1", me, shards, Patience, new Dictionary<string, object?> { ["step"] = 9L });
        })));

        var reader = DcpReader.Open(target);
        var entry = reader.TensorEntry("w");
        Assert.Equal(new long[] { 2, 2, 1, 0 }, entry.Chunks.Select(c => c.Sizes[0]));       // rank order, empty chunk included
        Assert.Equal(new long[] { 0, 2, 4, 5 }, entry.Chunks.Select(c => c.Offsets[0]));
        Assert.Single(reader.TensorEntry("r").Chunks);                                        // replicated: stored once
        Assert.Equal(Enumerable.Range(0, world).Select(i => $"__{i}_0.distcp"), Directory.GetFiles(target, "*.distcp").Select(Path.GetFileName).Order());
        Assert.Empty(Directory.GetFiles(target, ".manifest-*"));
        Assert.Equal(9L, reader.ReadValue("step"));

        // Resharding: 4 saved chunks read into 1, 2 and 3 ranks.
        foreach (int ranks in new[] { 1, 2, 3 })
        {
            for (int rank = 0; rank < ranks; rank++)
            {
                var (offsets, sizes) = ShardLayout.Box(w.shape, 0, ranks, rank);
                using var part = reader.ReadSlice("w", offsets, sizes);
                using var expected = w.narrow(0, offsets[0], sizes[0]);
                Assert.Equal(Flat(expected), Flat(part));
            }
        }
        Assert.Equal(0, CliApp.Run(new[] { "verify", target }, new StringWriter(), new StringWriter()));

        var json = new JsonObject
        {
            ["w"] = Describe(w),
            ["v"] = Describe(v),
            ["r"] = Describe(r),
            ["step"] = new JsonObject { ["value"] = 9 },
        };
        File.WriteAllText(folder["expected.json"], json.ToJsonString());
        var output = PythonTorch.Run("load_with_torch.py", target, folder["expected.json"]);
        Assert.Contains("OK 9 tensor records and 4 keys match", output);
    }

    [Fact]
    public async Task AMissingRankTimesOutByNameTheWaitingRanksNameTheCoordinatorAndThePreviousCheckpointStays()
    {
        using var folder = TestPaths.NewTempFolder();
        var target = folder["ckpt"];
        DcpWriter.Save(target, new[] { new KeyValuePair<string, object?>("w", torch.ones(4)) });
        using var w = torch.zeros(4);
        // Ranks 1 and 3 write their parts and wait for the commit; rank 2 never comes, so rank 0 gives up naming it, and
        // the waiting ranks stop with an error naming rank 0 long before their own timeout.
        var waiting = new[] { 1, 3 }.Select(rank => Task.Run(() =>
        {
            var me = new RankInfo(rank, 4);
            return Assert.Throws<IOException>(() => SaveRank(target, "save2", me, [Slice("w", w, 0, me)], Patience));
        })).ToList();
        var coordinator = new RankInfo(0, 4);
        var e = Assert.Throws<TimeoutException>(() => SaveRank(target, "save2", coordinator, [Slice("w", w, 0, coordinator)], TimeSpan.FromSeconds(2)));
        Assert.Contains("rank(s) 2", e.Message);
        foreach (var failed in await Task.WhenAll(waiting)) Assert.Contains("failed on rank 0", failed.Message);
        Assert.Equal(new[] { 1f, 1f, 1f, 1f }, DcpReader.Open(target).ReadTensor("w").data<float>().ToArray());
        Assert.Single(Directory.GetFiles(target, "*.distcp"));
        // Rank 2 never left word, so the staging folder stays until the next save's sweep removes it.
        DcpWriter.Save(target, new[] { new KeyValuePair<string, object?>("w", torch.ones(4)) });
        Assert.Equal(new[] { "ckpt" }, Directory.GetFileSystemEntries(folder.Path).Select(Path.GetFileName));
    }

    [Fact]
    public async Task ManifestsOfAnotherSaveAreNeverMixedIn()
    {
        using var folder = TestPaths.NewTempFolder();
        var target = folder["ckpt"];
        using var old = torch.full(4, 7f);
        using var fresh = torch.full(4, 3f);
        // An interrupted earlier save left rank 1's files behind.
        var second = new RankInfo(1, 2);
        Assert.Throws<TimeoutException>(() => SaveRank(target, "old", second, [Slice("w", old, 0, second)], TimeSpan.FromMilliseconds(100)));
        var waiting = Task.Run(() => SaveRank(target, "new", second, [Slice("w", fresh, 0, second)], Patience));
        var first = new RankInfo(0, 2);
        SaveRank(target, "new", first, [Slice("w", fresh, 0, first)], Patience);
        Assert.Null(await waiting);
        var reader = DcpReader.Open(target);
        Assert.Equal("new", reader.Metadata.SaveId);
        Assert.Equal(new[] { 3f, 3f, 3f, 3f }, reader.ReadTensor("w").data<float>().ToArray());
    }

    [Fact]
    public void RankAndWorldSizeComeFromArgumentsTorchrunOrSlurm()
    {
        Assert.Equal(new RankInfo(2, 4), RankInfo.Resolve(2, 4, _ => null));
        var torchrun = new Dictionary<string, string> { ["RANK"] = "1", ["WORLD_SIZE"] = "3", ["SLURM_PROCID"] = "5", ["SLURM_NTASKS"] = "8" };
        Assert.Equal(new RankInfo(1, 3), RankInfo.Resolve(null, null, k => torchrun.GetValueOrDefault(k)));
        var slurm = new Dictionary<string, string> { ["SLURM_PROCID"] = "5", ["SLURM_NTASKS"] = "8" };
        Assert.Equal(new RankInfo(5, 8), RankInfo.Resolve(null, null, k => slurm.GetValueOrDefault(k)));
        var none = Assert.Throws<InvalidOperationException>(() => RankInfo.Resolve(null, null, _ => null));
        Assert.Contains("RANK, WORLD_SIZE", none.Message);
        Assert.Contains("SLURM_PROCID", none.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => RankInfo.Resolve(4, 4));
    }

    [Fact]
    public void AOneRankShardedSaveIsByteForByteDcpWritersSave()
    {
        using var folder = TestPaths.NewTempFolder();
        using var w = torch.arange(12, dtype: torch.ScalarType.Float32).reshape(3, 4);
        using var b = torch.arange(5, dtype: torch.ScalarType.Int64);
        var values = new Dictionary<string, object?> { ["step"] = 4L, ["name"] = "x" };
        var state = values.Concat(new Dictionary<string, object?> { ["w"] = w, ["b"] = b }).ToList();
        var dense = DcpSave.Run(TensorChunks.OneRank(folder["dense"], state, options: null, saveId: "same"))!;
        var shards = new[] { new DcpShard("w", w, w.shape, new long[2]), new DcpShard("b", b, b.shape, new long[1]) };
        var sharded = SaveRank(folder["sharded"], "same", new RankInfo(0, 1), shards, Patience, values)!;

        Assert.Equal(File.ReadAllBytes(Path.Combine(folder["dense"], "__0_0.distcp")), File.ReadAllBytes(Path.Combine(folder["sharded"], "__0_0.distcp")));
        // The metadata too, but for the folder it names.
        dense.CheckpointId = sharded.CheckpointId = null;
        Assert.Equal(DcpMetadataWriter.Write(dense), DcpMetadataWriter.Write(sharded));
        Assert.Equal(new[] { ".metadata", "__0_0.distcp" }, Directory.GetFiles(folder["sharded"]).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    private static DcpMetadata? SaveRank(string target, string saveId, RankInfo rank, IEnumerable<DcpShard> shards, TimeSpan timeout,
        IReadOnlyDictionary<string, object?>? values = null) =>
        DcpSave.Run(TensorChunks.Sharded(target, saveId, rank, shards, values, timeout));

    private static DcpShard Slice(string key, torch.Tensor full, int dim, RankInfo rank)
    {
        var (offsets, sizes) = ShardLayout.Box(full.shape, dim, rank.WorldSize, rank.Rank);
        return new DcpShard(key, full.narrow(dim, offsets[dim], sizes[dim]), full.shape, offsets);
    }

    private static float[] Flat(torch.Tensor t) => t.numel() == 0 ? Array.Empty<float>() : t.contiguous().data<float>().ToArray();

    private static JsonObject Describe(torch.Tensor t) => new()
    {
        ["dtype"] = "float32",
        ["shape"] = new JsonArray(t.shape.Select(d => (JsonNode)d).ToArray()),
        ["values"] = new JsonArray(Flat(t).Select(x => (JsonNode)(double)x).ToArray()),
    };
}

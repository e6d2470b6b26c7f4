using System;
using System.IO;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;
using EmaGen.Dcp;
using EmaGen.Tests.Models;
using EmaGen.Tests.Runtime;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;

namespace EmaGen.Tests.Dcp;

/// <summary>
/// The one asynchronous save of both managers and the post-hoc snapshots (<c>AsyncSave</c>): the task completes once the
/// checkpoint is committed, one write runs at a time, a failure faults the task and keeps the previous checkpoint, and
/// the staging copies outlive every write that reads them.
/// </summary>
public sealed class AsyncSaveTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task TheTaskCompletesOnlyOnceTheCheckpointIsCommitted()
    {
        using var folder = TestPaths.NewTempFolder();
        using var model = new NestedModel(reflection: false);
        using var ema = new EmaManager<NestedModel>(model, 0.9);
        ema.Update(model);
        using var held = new Hold("commit");
        var save = ema.SaveAsync(folder["ckpt"]);
        held.WaitUntilReached();
        // .metadata is written but the folder not yet swapped in: the task must still run.
        await Task.Delay(100);
        Assert.False(save.IsCompleted);
        Assert.False(Directory.Exists(folder["ckpt"]));
        held.Release();
        await save;
        Assert.Equal(1L, DcpReader.Open(folder["ckpt"]).ReadValue("ema._emagen.step"));
    }

    [Fact]
    public async Task ACallWhileAWriteRunsWaitsForItAndSavesTheStateAtItsOwnCall()
    {
        using var folder = TestPaths.NewTempFolder();
        using var model = new NestedModel(reflection: false);
        using var ema = new EmaManager<NestedModel>(model, 0.9);
        ema.Update(model);
        using var held = new Hold("commit");
        var first = ema.SaveAsync(folder["ckpt"]);
        held.WaitUntilReached();
        // The shadows change while the first write is held; the first checkpoint keeps the state at its call.
        UpdateNumericsTests.RandomizeParameters(model);
        ema.Update(model);
        var later = ema.StateDict().ToDictionary(kv => kv.Key, kv => kv.Value.data<float>().ToArray());
        // The call itself (not only its write) waits for the first write.
        var secondCall = Task.Factory.StartNew(() => ema.SaveAsync(folder["ckpt"]), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        await Task.Delay(200);
        Assert.False(secondCall.IsCompleted);
        held.Release();
        await first;
        await await secondCall;
        var reader = DcpReader.Open(folder["ckpt"]);
        Assert.Equal(2L, reader.ReadValue("ema._emagen.step"));
        foreach (var (name, values) in later) Assert.Equal(values, reader.ReadTensor("ema." + name).data<float>().ToArray());
    }

    [Fact]
    public async Task DisposeWaitsForTheWriteThatReadsTheStagingCopies()
    {
        using var folder = TestPaths.NewTempFolder();
        using var model = new NestedModel(reflection: false);
        var ema = new EmaManager<NestedModel>(model, 0.9);
        ema.Update(model);
        using var held = new Hold("data");
        var save = ema.SaveAsync(folder["ckpt"]);
        held.WaitUntilReached();
        var disposing = Task.Run(ema.Dispose);
        await Task.Delay(200);
        Assert.False(disposing.IsCompleted);
        held.Release();
        await disposing;
        await save;
        Assert.Equal(1L, DcpReader.Open(folder["ckpt"]).ReadValue("ema._emagen.step"));
    }

    [Fact]
    public async Task AShardedSaveWithAMissingRankFaultsItsTaskAndKeepsThePreviousCheckpoint()
    {
        using var folder = TestPaths.NewTempFolder();
        var target = folder["ckpt"];
        using var model = new SizedModel(torch.ScalarType.Float32, 5, 7);
        var ranks = Enumerable.Range(0, 2).Select(r => new ShardedEmaManager<SizedModel>(model, r, 2, new EmaOptions { Decay = 0.9 })).ToList();
        try
        {
            foreach (var rank in ranks) rank.Update(model);
            await Task.WhenAll(ranks.Select(rank => rank.SaveAsync(target, "first", Patience)));
            foreach (var rank in ranks) rank.Update(model);

            var alone = ranks[0].SaveAsync(target, "second", TimeSpan.FromMilliseconds(300));
            var e = await Assert.ThrowsAsync<TimeoutException>(() => alone);
            Assert.Contains("rank(s) 1", e.Message);
            Assert.Equal("first", DcpReader.Open(target).Metadata.SaveId);
            Assert.Equal(1L, DcpReader.Open(target).ReadValue("ema._emagen.step"));

            // The next save call of that rank reports the failure once more, after starting its own save, so the ranks
            // stay in step: the save commits.
            var reported = Assert.Throws<IOException>(() => { _ = ranks[0].SaveAsync(target, "third", Patience); });
            Assert.IsType<TimeoutException>(reported.InnerException);
            Assert.Contains("a new asynchronous save was started", reported.Message);
            await ranks[1].SaveAsync(target, "third", Patience);
            Assert.Equal("third", DcpReader.Open(target).Metadata.SaveId);
            await Task.WhenAll(ranks.Select(rank => rank.SaveAsync(target, "fourth", Patience)));
            Assert.Equal(2L, DcpReader.Open(target).ReadValue("ema._emagen.step"));
        }
        finally
        {
            foreach (var rank in ranks) rank.Dispose();
        }
    }

    [Fact]
    public async Task ASynchronousSaveWaitsForAPendingAsynchronousOneSoTheNewerCheckpointWins()
    {
        using var folder = TestPaths.NewTempFolder();
        using var model = new NestedModel(reflection: false);
        using var ema = new EmaManager<NestedModel>(model, 0.9);
        ema.Save(folder["ckpt"]);
        ema.Update(model);
        Task first;
        using (var held = new Hold("commit"))
        {
            first = ema.SaveAsync(folder["ckpt"]);
            held.WaitUntilReached();
            UpdateNumericsTests.RandomizeParameters(model);
            ema.Update(model);
            // Without the wait, this save (which does not see the hold: no flow) would commit first and the older
            // asynchronous commit would then replace it.
            Task second;
            using (ExecutionContext.SuppressFlow())
            {
                second = Task.Factory.StartNew(() => ema.Save(folder["ckpt"]), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
            }
            await Task.Delay(200);
            Assert.False(second.IsCompleted);
            held.Release();
            await first;
            await second;
        }
        Assert.Equal(2L, DcpReader.Open(folder["ckpt"]).ReadValue("ema._emagen.step"));
    }

    [Fact]
    public void AnUnawaitedFailedAsynchronousSaveIsReportedByTheNextSaveCallOnceAfterItSaved()
    {
        using var folder = TestPaths.NewTempFolder();
        using var model = new NestedModel(reflection: false);
        using var ema = new EmaManager<NestedModel>(model, 0.9);
        ema.Update(model);
        ema.Save(folder["ckpt"]);
        ema.Update(model);
        using (FileOps.FailAt("metadata"))
        {
            _ = ema.SaveAsync(folder["ckpt"]);
        }
        // The next call saves, then reports the earlier failure.
        var e = Assert.Throws<IOException>(() => ema.Save(folder["ckpt"]));
        Assert.Contains(folder["ckpt"], e.Message);
        Assert.Contains("committed", e.Message);
        Assert.Contains("simulated failure at metadata", e.InnerException!.Message);
        Assert.Equal(2L, DcpReader.Open(folder["ckpt"]).ReadValue("ema._emagen.step"));
        // Reported once: the save after it just saves.
        ema.Update(model);
        ema.Save(folder["ckpt"]);
        Assert.Equal(3L, DcpReader.Open(folder["ckpt"]).ReadValue("ema._emagen.step"));
    }

    [Fact]
    public void AnUnawaitedFailedAsynchronousSaveWithNoLaterSaveIsReportedByDispose()
    {
        using var folder = TestPaths.NewTempFolder();
        using var model = new NestedModel(reflection: false);
        var ema = new EmaManager<NestedModel>(model, 0.9);
        ema.Update(model);
        using (FileOps.FailAt("data"))
        {
            _ = ema.SaveAsync(folder["ckpt"]);
        }
        var e = Assert.Throws<IOException>(ema.Dispose);
        Assert.Contains("simulated failure at data", e.InnerException!.Message);
        // Disposed all the same: the shadows are released.
        Assert.Throws<ObjectDisposedException>(() => ema.Update(model));
        ema.Dispose();
    }

    // Holds a write at one stage (FileOps.IsStage) until released; the writes the test starts while it lives see it.
    private sealed class Hold : IDisposable
    {
        private readonly ManualResetEventSlim _reached = new();
        private readonly ManualResetEventSlim _released = new();
        private readonly FileOps _watch;

        public Hold(string stage)
        {
            _watch = new FileOps((op, path) =>
            {
                if (!FileOps.IsStage(op, path, stage)) return;
                _reached.Set();
                _released.Wait(Patience);
            });
        }

        public void WaitUntilReached() => Assert.True(_reached.Wait(Patience), "the write never reached the held stage");

        public void Release() => _released.Set();

        public void Dispose()
        {
            _watch.Dispose();
            _released.Set();
            _reached.Dispose();
            _released.Dispose();
        }
    }
}

using System;
using System.Collections.Concurrent;
using System.Linq;
using System.Threading;
using EmaGen.Tests.Models;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace EmaGen.Tests.Runtime;

/// <summary>
/// The CPU update on LibTorch's OpenMP team (<see cref="OpenMpTeam"/>): found in this process, every part of a run on
/// its own team thread with the caller as part 0, a failure reported to the caller, and the same bits as helper threads
/// of the pool's own and as one thread, guard included, with no managed allocation per step.
/// </summary>
public sealed class LibTorchTeamTests
{
    [Fact]
    public void LibTorchsOpenMpTeamIsFoundOnLinux()
    {
        // The LibTorch CPU package ships its own libgomp (the tests run on linux-x64), mapped once a tensor exists.
        using var loaded = torch.ones(1);
        Assert.True(OpenMpTeam.Available);
    }

    [Fact]
    public void ARunGivesEachPartToOneTeamThreadAndTheCallerTakesPartZero()
    {
        using var loaded = torch.ones(1);
        Assert.True(OpenMpTeam.Available);
        using var pool = new CpuWorkerPool(3);
        var work = new RecordingWork();
        for (int run = 0; run < 5; run++)
        {
            work.Parts.Clear();
            pool.Run(work);
            Assert.Equal(new[] { 0, 1, 2 }, work.Parts.Keys.OrderBy(p => p));
            Assert.Equal(Environment.CurrentManagedThreadId, work.Parts[0]);
            Assert.Equal(3, work.Parts.Values.Distinct().Count());
            Assert.All(work.Counts, c => Assert.Equal(3, c));
        }
    }

    [Fact]
    public void AFailureOnATeamThreadReachesTheCaller()
    {
        using var loaded = torch.ones(1);
        Assert.True(OpenMpTeam.Available);
        using var pool = new CpuWorkerPool(2);
        var e = Assert.Throws<InvalidOperationException>(() => pool.Run(new FailingWork()));
        Assert.Equal("part 1 failed", e.InnerException!.Message);
        // The team is usable after the failure.
        var work = new RecordingWork();
        pool.Run(work);
        Assert.Equal(2, work.Parts.Count);
    }

    [Fact]
    public void TheTeamOwnThreadsAndOneThreadGiveTheSameBitsUnderTheGuard()
    {
        // 1.2M elements over 80 odd sizes: threaded, and two blocks of the check's pointer reads, so the check shares
        // them with the team too; NaNs and infinities in some steps take the guard's element path.
        torch.manual_seed(31);
        long[] sizes = Enumerable.Range(0, 80).Select(i => 15_000L + 17 * i).ToArray();
        var models = Enumerable.Range(0, 3).Select(_ => new SizedModel(ScalarType.Float32, sizes)).ToArray();
        for (int m = 1; m < models.Length; m++) FastPathTests.CopyParameters(models[0], models[m]);
        var options = new[]
        {
            new EmaOptions { Decay = 0.9, Threads = 2 },
            new EmaOptions { Decay = 0.9, Threads = 2, OwnUpdateThreads = true },
            new EmaOptions { Decay = 0.9, Threads = 1 },
        };
        var managers = models.Select((m, i) => new EmaManager<SizedModel>(m, options[i])).ToArray();
        try
        {
            Assert.Equal(2, managers[0].UpdateThreads);
            Assert.EndsWith("on 2 threads of LibTorch's OpenMP team", managers[0].UpdatePath);
            Assert.EndsWith("on 2 threads of its own", managers[1].UpdatePath);
            Assert.Equal(1, managers[2].UpdateThreads);
            for (int step = 0; step < 8; step++)
            {
                UpdateNumericsTests.RandomizeParameters(models[0]);
                if (step % 3 == 1)
                {
                    using var _ = torch.no_grad();
                    using var nan = models[0][step].narrow(0, step * 101L, 1);
                    using var inf = models[0][39 - step].narrow(0, 7, 1);
                    nan.fill_(float.NaN);
                    inf.fill_(float.PositiveInfinity);
                }
                for (int m = 1; m < models.Length; m++) FastPathTests.CopyParameters(models[0], models[m]);
                foreach (var (ema, model) in managers.Zip(models)) ema.Update(model);
                Assert.Equal(step % 3 == 1 ? 2 : 0, managers[0].LastUpdate.NonFiniteElements);
                Assert.Equal(managers[2].LastUpdate.NonFiniteTensors, managers[0].LastUpdate.NonFiniteTensors);
            }
            foreach (var name in managers[0].TrackedNames)
            {
                var single = managers[2][name].data<float>().ToArray();
                Assert.Equal(single, managers[0][name].data<float>().ToArray());
                Assert.Equal(single, managers[1][name].data<float>().ToArray());
            }

            Assert.Equal(0, Allocations.OfSteadyState(() => managers[0].Update(models[0]), warmup: 50, measured: 10));
        }
        finally
        {
            foreach (var ema in managers) ema.Dispose();
            foreach (var model in models) model.Dispose();
        }
    }

    private sealed class RecordingWork : IPartitionedWork
    {
        public readonly ConcurrentDictionary<int, int> Parts = new();
        public readonly ConcurrentBag<int> Counts = new();

        public void Execute(int part, int parts)
        {
            Parts[part] = Environment.CurrentManagedThreadId;
            Counts.Add(parts);
            // Long enough that one thread cannot take two parts by finishing early.
            Thread.Sleep(5);
        }
    }

    private sealed class FailingWork : IPartitionedWork
    {
        public void Execute(int part, int parts)
        {
            if (part == 1) throw new InvalidOperationException("part 1 failed");
        }
    }
}

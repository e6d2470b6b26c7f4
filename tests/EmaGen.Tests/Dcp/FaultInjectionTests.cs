using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Security.Cryptography;
using System.Threading;
using System.Threading.Tasks;
using EmaGen.Cli;
using EmaGen.Dcp;
using EmaGen.Tests.Models;
using EmaGen.Tests.Runtime;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;

namespace EmaGen.Tests.Dcp;

/// <summary>
/// Every save kind, run once for every N with the N-th file-system operation failing (as SQLite tests its I/O errors),
/// until a run reaches no N-th operation. At each N: the caller gets an <see cref="IOException"/> naming a path (an
/// asynchronous save, a faulted task), the previous checkpoint loads bit-equal, no staging folder or temporary file is
/// left, and the same save with the fault removed succeeds. Loads likewise: a failing read names the file and leaves
/// the shadows untouched. The fault seam (<see cref="FileOps"/>) belongs to the test's own flow, so the class runs beside
/// the others.
/// </summary>
public sealed class FaultInjectionTests(ITestOutputHelper output)
{
    // Short, since a rank that fails before it can say so leaves the others to time out (naming it).
    private static readonly TimeSpan Rendezvous = TimeSpan.FromSeconds(2);

    [Fact]
    public void DenseSave() => Report("dense Save", ForEveryFaultPoint((ema, target) => ema.Save(target), reportedAgain: false));

    /// <summary>
    /// A parameter over 1 MiB is written straight from its memory while another core computes its checksums: a failed
    /// write must wait for that task before the caller can free the memory (an access violation otherwise).
    /// </summary>
    [Fact]
    public void DenseSaveOfATensorChecksummedInTheBackground() =>
        Report("dense Save, 1.6 MB parameter", ForEveryFaultPoint((ema, target) => ema.Save(target), reportedAgain: false, 400_000));

    [Fact]
    public void DenseSaveAsync() => Report("dense SaveAsync", ForEveryFaultPoint((ema, target) =>
    {
        // The staging copy is made on the calling thread before any file operation: a fault can only fault the task.
        var task = ema.SaveAsync(target);
        task.GetAwaiter().GetResult();
    }, reportedAgain: true));

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void PostHocSnapshot(bool async)
    {
        int runs = 0;
        for (int n = 1; ; n++)
        {
            using var folder = TestPaths.NewTempFolder();
            using var model = new SizedModel(torch.ScalarType.Float32, 6, 5);
            using var ema = new EmaManager<SizedModel>(model, new EmaOptions { Schedule = EmaSchedule.PowerFunction(0.1) });
            ema.Update(model);
            var first = PostHocEma.SaveSnapshot(ema, folder["snaps"]);
            var before = Fingerprint(first);
            UpdateNumericsTests.RandomizeParameters(model);
            ema.Update(model);
            var second = Path.Combine(folder["snaps"], "step-0000000002");
            var fault = new NthFault(n);
            Exception? error;
            using (new FileOps(fault.Observe))
            {
                error = Record(() =>
                {
                    if (async) PostHocEma.SaveSnapshotAsync(ema, folder["snaps"]).GetAwaiter().GetResult();
                    else PostHocEma.SaveSnapshot(ema, folder["snaps"]);
                });
            }
            if (!fault.Hit)
            {
                Assert.Null(error);
                break;
            }
            runs++;
            AssertFailedCleanly(error, fault, folder.Path);
            Assert.Equal(before, Fingerprint(first));
            Assert.False(Directory.Exists(second));
            Assert.Equal(new[] { "step-0000000001" }, Directory.GetFileSystemEntries(folder["snaps"]).Select(Path.GetFileName));
            // An asynchronous failure is reported once more by the next call, after it saved.
            if (async) Assert.Throws<IOException>(() => PostHocEma.SaveSnapshot(ema, folder["snaps"]));
            else PostHocEma.SaveSnapshot(ema, folder["snaps"]);
            Assert.Equal(2L, DcpReader.Open(second).ReadValue("_emagen.step"));
        }
        Report(async ? "post-hoc SaveSnapshotAsync" : "post-hoc SaveSnapshot", runs);
    }

    [Theory]
    [InlineData(0, false)]
    [InlineData(1, false)]
    [InlineData(0, true)]
    [InlineData(1, true)]
    public async Task ShardedSaveOfTwoRanks(int failingRank, bool async)
    {
        int runs = 0, timeouts = 0;
        for (int n = 1; ; n++)
        {
            using var folder = TestPaths.NewTempFolder();
            var target = folder["ckpt"];
            using var model = new SizedModel(torch.ScalarType.Float32, 6, 5);
            var ranks = Enumerable.Range(0, 2).Select(r => new ShardedEmaManager<SizedModel>(model, r, 2, new EmaOptions { Decay = 0.5 })).ToList();
            try
            {
                foreach (var rank in ranks) rank.Update(model);
                await Task.WhenAll(ranks.Select(rank => Task.Run(() => rank.Save(target, "first", Rendezvous))));
                var before = Fingerprint(target);
                UpdateNumericsTests.RandomizeParameters(model);
                foreach (var rank in ranks) rank.Update(model);

                var fault = new NthFault(n);
                var errors = await Task.WhenAll(ranks.Select((rank, r) => Task.Run(() =>
                {
                    using var _ = r == failingRank ? new FileOps(fault.Observe) : null;
                    return Record(() =>
                    {
                        if (async) rank.SaveAsync(target, "second", Rendezvous).GetAwaiter().GetResult();
                        else rank.Save(target, "second", Rendezvous);
                    });
                })));
                if (!fault.Hit)
                {
                    Assert.All(errors, Assert.Null);
                    break;
                }
                runs++;
                if (errors[failingRank] is null)
                {
                    // Absorbed: a failed read of the committed .metadata by a waiting rank is read again; a failed removal
                    // of the replaced checkpoint after the commit is left to the next save's sweep.
                    Assert.True(failingRank == 1 ? fault.Op is FileOp.OpenRead or FileOp.Read : fault.Op == FileOp.DeleteDirectory, $"{fault.Op} on rank {failingRank}");
                    Assert.All(errors, Assert.Null);
                    Assert.Equal(2L, DcpReader.Open(target).ReadValue("ema._emagen.step"));
                    await Task.WhenAll(ranks.Select(rank => Task.Run(() => rank.Save(target, "third", Rendezvous))));
                    AssertNothingLeft(folder.Path);
                    continue;
                }
                AssertFailedCleanly(errors[failingRank], fault, folder.Path);
                // The other rank stops with an error naming the failed rank: at once when the failed rank could leave word
                // in the staging folder, else when the rendezvous times out.
                var other = errors[1 - failingRank];
                Assert.True(other is not null, $"rank {1 - failingRank} saved although rank {failingRank} failed at {fault.Op} of {fault.Path}: {errors[failingRank]}");
                Assert.True(System.Text.RegularExpressions.Regex.IsMatch(other.Message, $@"rank(\(s\))? {failingRank}\b"), other.ToString());
                if (other is TimeoutException) timeouts++;
                Assert.Equal(before, Fingerprint(target));
                AssertNothingLeft(folder.Path);
                // Both ranks' tasks failed: each rank's next call saves, then reports it once more.
                await Task.WhenAll(ranks.Select(rank => Task.Run(() =>
                {
                    if (async) Assert.Throws<IOException>(() => rank.Save(target, "third", Rendezvous));
                    else rank.Save(target, "third", Rendezvous);
                })));
                Assert.Equal(2L, DcpReader.Open(target).ReadValue("ema._emagen.step"));
                AssertNothingLeft(folder.Path);
            }
            finally
            {
                foreach (var rank in ranks) rank.Dispose();
            }
        }
        Report($"sharded {(async ? "SaveAsync" : "Save")} (2 ranks, rank {failingRank} failing; the other rank timed out at {timeouts} of the runs)", runs);
    }

    /// <summary>
    /// The interleaving that once left the staging folder behind in <see cref="ShardedSaveOfTwoRanks"/>: rank 1 fails
    /// before it takes its lock and creates the staging folder to leave its word there, and rank 0, starting meanwhile,
    /// finds that folder unlocked and without word (yet). The word must survive rank 0's clearing of an earlier attempt,
    /// so rank 0 stops at once naming rank 1 (instead of timing out) and the folder is gone once both have returned.
    /// </summary>
    [Fact]
    public async Task ARankFailingBeforeItsLockKeepsItsWordWhileRankZeroStarts()
    {
        using var folder = TestPaths.NewTempFolder();
        var target = folder["ckpt"];
        using var block = torch.zeros(2);
        var timeout = TimeSpan.FromSeconds(3);
        var patience = TimeSpan.FromSeconds(30);
        var folderMade = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var zeroLocks = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var oneReturned = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        DcpMetadata? Save(int rank) => DcpSave.Run(TensorChunks.Sharded(target, "second", new RankInfo(rank, 2),
            [new DcpShard("w", block, new long[] { 4 }, new long[] { 2 * rank })], values: null, timeout));

        var one = Task.Run(() =>
        {
            using var _ = new FileOps((op, path) =>
            {
                if (op == FileOp.CreateFile && path.EndsWith(".lock-1", StringComparison.Ordinal)) throw new IOException($"simulated failure: '{path}'");
                if (op == FileOp.CreateFile && Path.GetFileName(path) == ".failed-1")
                {
                    // The staging folder exists, the word does not: rank 0 starts now, and rank 1 writes its word once
                    // rank 0 is past its clearing of the folder (about to take its lock).
                    folderMade.SetResult();
                    Assert.True(zeroLocks.Task.Wait(patience));
                }
            });
            try
            {
                return Record(() => Save(1));
            }
            finally
            {
                oneReturned.SetResult();
            }
        });
        var zero = Task.Run(() =>
        {
            using var _ = new FileOps((op, path) =>
            {
                Assert.True(folderMade.Task.Wait(patience));
                if (op == FileOp.CreateFile && path.EndsWith(".lock-0", StringComparison.Ordinal))
                {
                    zeroLocks.SetResult();
                    Assert.True(oneReturned.Task.Wait(patience));
                }
            });
            return Record(() => Save(0));
        });
        var errors = await Task.WhenAll(one, zero);

        Assert.Contains("simulated failure", Assert.IsType<IOException>(errors[0]).Message);
        Assert.True(errors[1] is IOException && errors[1]!.Message.Contains("failed on rank 1", StringComparison.Ordinal), $"rank 0: {errors[1]}");
        Assert.False(Directory.Exists(target));
        AssertNothingLeft(folder.Path);
    }

    [Theory]
    [InlineData("to-safetensors")]
    [InlineData("to-dcp")]
    public void CliConvert(string direction)
    {
        int runs = 0;
        for (int n = 1; ; n++)
        {
            using var folder = TestPaths.NewTempFolder();
            var (source, target) = direction == "to-safetensors" ? (folder["ckpt"], folder["model.safetensors"]) : (folder["model.safetensors"], folder["ckpt"]);
            DcpWriter.Save(folder["ckpt"], State(1f));
            Assert.Equal(0, Convert(folder["ckpt"], folder["model.safetensors"]).Code);
            // The source now holds the new state, the target the previous one.
            if (direction == "to-safetensors")
            {
                DcpWriter.Save(source, State(2f));
            }
            else
            {
                DcpWriter.Save(folder["ckpt"], State(2f));
                Assert.Equal(0, Convert(folder["ckpt"], source).Code);
                DcpWriter.Save(folder["ckpt"], State(1f));
            }
            var before = TargetBytes(target);
            var fault = new NthFault(n);
            (int Code, string Stderr) result;
            using (new FileOps(fault.Observe))
            {
                result = Convert(source, target);
            }
            if (!fault.Hit)
            {
                Assert.Equal(0, result.Code);
                break;
            }
            runs++;
            if (result.Code == 0)
            {
                // Committed, then removing the replaced checkpoint failed: the new state is there, the next save sweeps it.
                Assert.Equal(FileOp.DeleteDirectory, fault.Op);
                Assert.NotEqual(before, TargetBytes(target));
                Assert.Equal(0, Convert(source, target).Code);
                AssertNothingLeft(folder.Path);
                continue;
            }
            // One line naming a path, never an abort.
            Assert.Equal(1, result.Code);
            Assert.StartsWith("emagen: ", result.Stderr);
            Assert.Single(result.Stderr.TrimEnd().Split('\n'));
            Assert.Contains(folder.Path, result.Stderr);
            Assert.DoesNotContain("unexpected", result.Stderr);
            Assert.Equal(before, TargetBytes(target));
            AssertNothingLeft(folder.Path);
            Assert.Equal(0, Convert(source, target).Code);
        }
        Report($"emagen convert {direction}", runs);
    }

    [Fact]
    public void Load()
    {
        using var folder = TestPaths.NewTempFolder();
        using var model = new SizedModel(torch.ScalarType.Float32, 6, 5);
        using var ema = new EmaManager<SizedModel>(model, 0.5);
        ema.Update(model);
        ema.Save(folder["ckpt"]);
        UpdateNumericsTests.RandomizeParameters(model);
        ema.Update(model);
        var shadows = ema.StateDict().ToDictionary(kv => kv.Key, kv => TensorValues.Bits(kv.Value));
        int runs = 0;
        for (int n = 1; ; n++)
        {
            var fault = new NthFault(n);
            Exception? error;
            using (new FileOps(fault.Observe))
            {
                error = Record(() => ema.Load(folder["ckpt"]));
            }
            if (!fault.Hit)
            {
                Assert.Null(error);
                break;
            }
            runs++;
            var io = Assert.IsAssignableFrom<IOException>(error);
            Assert.True(io.Message.Contains(fault.Path, StringComparison.Ordinal) && fault.Path.StartsWith(folder["ckpt"] + "/", StringComparison.Ordinal),
                $"the error does not name the file {fault.Path}: {io.Message}");
            Assert.Equal(2, ema.Step);
            foreach (var (name, bits) in shadows) Assert.Equal(bits, TensorValues.Bits(ema[name]));
        }
        Assert.Equal(1, ema.Step);
        Report("Load", runs);
    }

    // Runs a dense save of a small model once for every fault point; returns how many there were.
    // reportedAgain: a failed save is reported once more by the manager's next save call (which still saves).
    private static int ForEveryFaultPoint(Action<EmaManager<SizedModel>, string> save, bool reportedAgain, long largest = 6)
    {
        for (int n = 1; ; n++)
        {
            using var folder = TestPaths.NewTempFolder();
            var target = folder["ckpt"];
            using var model = new SizedModel(torch.ScalarType.Float32, largest, 5);
            using var ema = new EmaManager<SizedModel>(model, 0.5);
            ema.Update(model);
            ema.Save(target);
            var before = Fingerprint(target);
            UpdateNumericsTests.RandomizeParameters(model);
            ema.Update(model);
            var fault = new NthFault(n);
            Exception? error;
            using (new FileOps(fault.Observe))
            {
                error = Record(() => save(ema, target));
            }
            if (!fault.Hit)
            {
                Assert.Null(error);
                return n - 1;
            }
            if (error is null)
            {
                // Only a fault after the commit (removing the replaced folder) may leave the save successful: then the
                // checkpoint is the new one, and the next save sweeps the leftover.
                Assert.Equal(2L, DcpReader.Open(target).ReadValue("ema._emagen.step"));
                Assert.Equal(FileOp.DeleteDirectory, fault.Op);
            }
            else
            {
                AssertFailedCleanly(error, fault, folder.Path);
                Assert.Equal(before, Fingerprint(target));
                AssertNothingLeft(folder.Path);
            }
            if (reportedAgain && error is not null) Assert.Contains("committed", Assert.Throws<IOException>(() => ema.Save(target)).Message);
            else ema.Save(target);
            Assert.Equal(2L, DcpReader.Open(target).ReadValue("ema._emagen.step"));
            AssertNothingLeft(folder.Path);
        }
    }

    private static void AssertFailedCleanly(Exception? error, NthFault fault, string root)
    {
        Assert.True(error is not null, $"a fault at {fault.Op} of '{fault.Path}' was not reported");
        var io = Assert.IsAssignableFrom<IOException>(error);
        Assert.True(io.Message.Contains(root, StringComparison.Ordinal), $"the error does not name a path under {root}: {io.Message}");
    }

    // Only the checkpoint (and, for convert, its source and earlier outputs): no staging folder, lock, manifest or temp.
    private static void AssertNothingLeft(string root)
    {
        var hidden = Directory.GetFileSystemEntries(root).Select(Path.GetFileName).Where(n => n!.StartsWith('.')).ToList();
        Assert.True(hidden.Count == 0, $"left behind: {string.Join(", ", hidden)}");
    }

    // Every run failed one operation with one error; the fault points are the operations.
    private void Report(string kind, int runs)
    {
        int points = runs / NthFault.Errors;
        Assert.True(points > 5, $"{kind}: only {points} fault points");
        var line = $"{kind}: {points} fault points x {NthFault.Errors} errors = {runs} runs, each failing cleanly and recovering";
        output.WriteLine(line);
        // CI prints this file after the test run (dotnet test's console shows no test output at its default verbosity).
        lock (Counts) File.AppendAllText(Path.Combine(AppContext.BaseDirectory, "fault-injection.txt"), line + Environment.NewLine);
    }

    private static readonly object Counts = new();

    private static Exception? Record(Action action)
    {
        try
        {
            action();
            return null;
        }
        catch (Exception e)
        {
            return e;
        }
    }

    // Every key's bytes (tensors) or printed value, hashed: equal fingerprints are bit-equal checkpoints.
    private static string Fingerprint(string folder)
    {
        var reader = DcpReader.Open(folder);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var entry in reader.Entries)
        {
            hash.AppendData(System.Text.Encoding.UTF8.GetBytes(entry.Key));
            if (entry is DcpTensorEntry)
            {
                using var t = reader.ReadTensor(entry.Key);
                hash.AppendData(TensorValues.Bits(t));
            }
            else
            {
                hash.AppendData(System.Text.Encoding.UTF8.GetBytes(ValueText(reader.ReadValue(entry.Key))));
            }
        }
        return System.Convert.ToHexString(hash.GetHashAndReset());
    }

    private static string ValueText(object? value) => value switch
    {
        double d => BitConverter.DoubleToInt64Bits(d).ToString(),
        _ => value?.ToString() ?? "null",
    };

    private static string TargetBytes(string target) => File.Exists(target)
        ? System.Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(target)))
        : Fingerprint(target);

    private static (int Code, string Stderr) Convert(string source, string target)
    {
        var stderr = new StringWriter();
        int code = CliApp.Run(["convert", source, target], new StringWriter(), stderr);
        return (code, stderr.ToString());
    }

    private static IEnumerable<KeyValuePair<string, object?>> State(float value) =>
    [
        new("w", torch.full(new long[] { 3, 4 }, value)),
        new("b", torch.full(5, value, dtype: torch.ScalarType.BFloat16)),
        new("step", (long)value),
    ];

    /// <summary>
    /// Run r fails operation (r - 1) / 4 + 1 with error (r - 1) % 4 — ENOSPC, EIO, EACCES, a short write (ENOSPC where
    /// the operation is not a write) — so every operation meets every error.
    /// </summary>
    private sealed class NthFault(int run)
    {
        public const int Errors = 4;
        private readonly int _point = (run - 1) / Errors + 1;
        private int _count;

        public bool Hit { get; private set; }

        public FileOp Op { get; private set; }

        public string Path { get; private set; } = "";

        public void Observe(FileOp op, string path)
        {
            if (Interlocked.Increment(ref _count) != _point) return;
            (Hit, Op, Path) = (true, op, path);
            throw ((run - 1) % Errors) switch
            {
                0 => new IOException($"No space left on device : '{path}'", unchecked((int)0x8007001C)),
                1 => new IOException($"Input/output error : '{path}'", 5),
                2 => new UnauthorizedAccessException($"Access to the path '{path}' is denied."),
                _ => op == FileOp.Write ? new ShortWriteException($"No space left on device : '{path}' (short write)") : new IOException($"No space left on device : '{path}'"),
            };
        }
    }
}

using System;
using System.Threading;

namespace EmaGen;

/// <summary>Work that can be split into <c>parts</c> independent pieces; piece 0 runs on the calling thread.</summary>
internal interface IPartitionedWork
{
    void Execute(int part, int parts);
}

/// <summary>
/// A few dedicated helper threads for the CPU update. Unlike <c>Parallel.For</c> it allocates nothing per run
/// (pre-made signals, one shared work reference), which keeps the steady-state update free of managed allocations.
/// </summary>
internal sealed class CpuWorkerPool : IDisposable
{
    private readonly Thread[] _threads;
    // Short spins only (WorkerSignal): on SMT machines a spinning waiter steals issue slots from the sibling doing the
    // real work, and idle helpers must not burn a core between updates. The parallel path is only taken for updates
    // long enough (>= 1M elements) that a wake-up is small beside them.
    private readonly WorkerSignal[] _start;
    private readonly WorkerSignal _done = new();
    private IPartitionedWork? _work;
    private int _parts;
    private int _remaining;
    private Exception? _failure;
    private volatile bool _stopping;

    public CpuWorkerPool(int threads)
    {
        Parallelism = Math.Max(1, threads);
        _threads = new Thread[Parallelism - 1];
        _start = new WorkerSignal[Parallelism - 1];
        for (int i = 0; i < _threads.Length; i++)
        {
            _start[i] = new WorkerSignal();
            int part = i + 1;
            _threads[i] = new Thread(() => Loop(part)) { IsBackground = true, Name = $"EmaGen update {part}" };
            _threads[i].Start();
        }
    }

    /// <summary>Threads a run uses, the caller's included.</summary>
    public int Parallelism { get; }

    /// <summary>Runs <paramref name="work"/> split into <see cref="Parallelism"/> parts and returns when all are done.</summary>
    public void Run(IPartitionedWork work)
    {
        if (_threads.Length == 0)
        {
            work.Execute(0, 1);
            return;
        }
        _work = work;
        _parts = Parallelism;
        _failure = null;
        _remaining = _threads.Length;
        _done.Reset();
        foreach (var start in _start) start.Set();
        try
        {
            work.Execute(0, _parts);
        }
        finally
        {
            _done.Wait();
            _work = null;
        }
        if (_failure is { } failure) throw new InvalidOperationException("An EMA update thread failed.", failure);
    }

    private void Loop(int part)
    {
        var start = _start[part - 1];
        while (true)
        {
            start.Wait();
            start.Reset();
            if (_stopping) return;
            try
            {
                _work!.Execute(part, _parts);
            }
            catch (Exception e)
            {
                _failure = e;
            }
            if (Interlocked.Decrement(ref _remaining) == 0) _done.Set();
        }
    }

    public void Dispose()
    {
        _stopping = true;
        foreach (var start in _start) start.Set();
        foreach (var thread in _threads) thread.Join();
    }
}

using System;
using System.Diagnostics;
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
/// <para>
/// Waking a sleeping helper is slow on a virtual machine: measured on this project's 2-core VM after the benchmark's
/// cache sweep, a run of empty work costs 0.15-0.26 ms (tests/Benchmarks <c>overhead</c>: wake_threads_cold), a large share of a 1 ms update. So a manager
/// calls <see cref="WakeAhead"/> when a step starts: the helpers wake while the caller checks the model, take a share of
/// the check's pointer reads (<see cref="KnownPointerPass"/>), then spin (bounded by <see cref="WakeAheadSpin"/>) until
/// <see cref="Run"/> hands them work. Idle helpers never spin beyond that bound, so they do not take a core from the
/// trainer between updates. Sharing the reads took check plus wake-up from 0.415-0.42 ms to 0.32-0.37 ms at 1,000
/// tensors, paired in three runs (<c>overhead</c>: model_check_unshared against model_check_shared).
/// </para>
/// <para>
/// What this pool cannot help: right after a LibTorch op, LibTorch's OpenMP workers busy-wait for 5-10 ms and hold the
/// cores the helpers need (the update benchmark's <c>after_libtorch_op_ratio_to_limit</c>; see the README).
/// </para>
/// </summary>
internal sealed class CpuWorkerPool : IDisposable
{
    private const int Sleeping = 0, Awake = 1, Assigned = 2;

    // Longer than a step's model check (0.3 ms at 1,000 tensors from a cold cache), short beside a training step.
    private static readonly long WakeAheadSpin = Stopwatch.Frequency / 1000;
    // How long the caller spins for the helpers' last chunks before blocking (a chunk streams in about 0.05 ms).
    private static readonly long FinishSpin = Stopwatch.Frequency / 2000;

    private readonly Thread[] _threads;
    private readonly WorkerSignal[] _start;
    private readonly int[] _state;
    private readonly WorkerSignal _done = new();
    private volatile IPartitionedWork? _work;
    private volatile IAheadWork? _ahead;
    private int _parts;
    private int _remaining;
    private Exception? _failure;
    private volatile bool _stopping;

    public CpuWorkerPool(int threads)
    {
        Parallelism = Math.Max(1, threads);
        _threads = new Thread[Parallelism - 1];
        _start = new WorkerSignal[Parallelism - 1];
        _state = new int[Parallelism - 1];
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

    /// <summary>
    /// Wakes sleeping helpers now, so that they are running when the next <see cref="Run"/> comes; until then they
    /// share <paramref name="ahead"/> (the step's pointer reads) with the caller.
    /// </summary>
    public void WakeAhead(IAheadWork? ahead = null)
    {
        _ahead = ahead;
        for (int i = 0; i < _threads.Length; i++)
        {
            if (Interlocked.CompareExchange(ref _state[i], Awake, Sleeping) == Sleeping) _start[i].Set();
        }
    }

    /// <summary>Runs <paramref name="work"/> split into <see cref="Parallelism"/> parts and returns when all are done.</summary>
    public void Run(IPartitionedWork work)
    {
        if (_threads.Length == 0)
        {
            work.Execute(0, 1);
            return;
        }
        _parts = Parallelism;
        _failure = null;
        _remaining = _threads.Length;
        _done.Reset();
        _work = work;
        for (int i = 0; i < _threads.Length; i++)
        {
            // A helper spinning after WakeAhead sees the work; a sleeping one (or one that gave up) is woken.
            if (Interlocked.Exchange(ref _state[i], Assigned) == Sleeping) _start[i].Set();
        }
        try
        {
            work.Execute(0, _parts);
        }
        finally
        {
            long deadline = Stopwatch.GetTimestamp() + FinishSpin;
            while (Volatile.Read(ref _remaining) != 0 && Stopwatch.GetTimestamp() < deadline) Thread.SpinWait(16);
            _done.Wait();
            _work = null;
        }
        if (_failure is { } failure) throw new InvalidOperationException("An EMA update thread failed.", failure);
    }

    private void Loop(int part)
    {
        int index = part - 1;
        var start = _start[index];
        while (true)
        {
            start.Wait();
            start.Reset();
            if (_stopping) return;
            var work = WaitForWork(index);
            if (work is null) continue;
            try
            {
                work.Execute(part, _parts);
            }
            catch (Exception e)
            {
                _failure = e;
            }
            Volatile.Write(ref _state[index], Sleeping);
            if (Interlocked.Decrement(ref _remaining) == 0) _done.Set();
        }
    }

    // The work of the current run, or null when woken ahead and none came within the bound (back to sleep).
    private IPartitionedWork? WaitForWork(int index)
    {
        long deadline = Stopwatch.GetTimestamp() + WakeAheadSpin;
        while (true)
        {
            if (Volatile.Read(ref _state[index]) == Assigned && _work is { } work) return work;
            if (_stopping) return null;
            _ahead?.Help();
            if (Stopwatch.GetTimestamp() >= deadline && Interlocked.CompareExchange(ref _state[index], Sleeping, Awake) == Awake) return null;
            Thread.SpinWait(16);
        }
    }

    public void Dispose()
    {
        _stopping = true;
        foreach (var start in _start) start.Set();
        foreach (var thread in _threads) thread.Join();
    }
}

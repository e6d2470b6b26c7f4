using System;
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Threading;

namespace EmaGen;

/// <summary>Work a woken update helper can share before it is handed the update itself.</summary>
internal interface IAheadWork
{
    /// <summary>Takes pieces of the work until none are left; returns at once when there is none.</summary>
    void Help();
}

/// <summary>Work that can be split into <c>parts</c> independent pieces; piece 0 runs on the calling thread.</summary>
internal interface IPartitionedWork
{
    void Execute(int part, int parts);
}

/// <summary>
/// The threads of the CPU update. Where LibTorch runs its CPU ops on a GNU OpenMP team (<see cref="OpenMpTeam"/>), a run
/// is a parallel region on that team: right after a LibTorch op (the optimizer's step, which a trainer's update follows)
/// the team's workers busy-wait for more work for some milliseconds, each holding a core, and threads of our own would
/// share those cores with them instead of using them. Elsewhere it keeps a few helper threads of its own.
/// <para>
/// Either way it allocates nothing per run. The own helpers wait on one lock object per signal made up front
/// (<c>ManualResetEventSlim</c> would create its lock and kernel event lazily on the first wait that blocks, making the
/// allocation count depend on thread timing). Waking a sleeping helper is slow on a virtual machine, so a manager calls
/// <see cref="WakeAhead"/> when a step starts: the helpers wake while the caller checks the model, take a share of the
/// check's pointer reads (<see cref="LiveSlots"/>), then spin (bounded by <see cref="WakeAheadSpin"/>) until
/// <see cref="Run"/> hands them work, and never longer, so they do not take a core from the trainer between updates.
/// The measured costs are in docs/performance.md.
/// </para>
/// </summary>
internal sealed unsafe class CpuWorkerPool : IDisposable
{
    private const int Sleeping = 0, Awake = 1, Assigned = 2;

    // Longer than a step's model check of a thousand tensors from a cold cache (docs/performance.md), short beside a
    // training step.
    private static readonly long WakeAheadSpin = Stopwatch.Frequency / 1000;
    // How long the caller spins for the helpers' last chunks before blocking: several chunks' streaming time.
    private static readonly long FinishSpin = Stopwatch.Frequency / 2000;

    private readonly Thread[] _threads;
    private const int SignalSpins = 20;
    // Manual-reset signals: one per helper (start), and the last for the caller (done). A short spin, then Monitor.Wait
    // on a lock object made up front.
    private readonly object[] _signalLock;
    private readonly bool[] _signalSet;
    private readonly int[] _state;
    private volatile IPartitionedWork? _work;
    private volatile IAheadWork? _ahead;
    private int _parts;
    private int _remaining;
    private Exception? _failure;
    private volatile bool _stopping;

    // Set when the runs go to LibTorch's OpenMP team (no helper threads of our own); the pool's handle is the region's state.
    private readonly bool _openMp;
    private GCHandle _self;

    /// <param name="threads">Threads a run uses, the caller's included.</param>
    /// <param name="ownThreads">Helper threads of its own even where LibTorch's OpenMP team could run the work (the benchmark's comparison).</param>
    public CpuWorkerPool(int threads, bool ownThreads = false)
    {
        Parallelism = Math.Max(1, threads);
        _openMp = !ownThreads && Parallelism > 1 && OpenMpTeam.Available;
        if (_openMp) _self = GCHandle.Alloc(this);
        // On LibTorch's team the pool has no helper threads of its own.
        int helpers = _openMp ? 0 : Parallelism - 1;
        _threads = new Thread[helpers];
        _signalLock = new object[helpers + 1];
        _signalSet = new bool[helpers + 1];
        for (int i = 0; i < _signalLock.Length; i++) _signalLock[i] = new object();
        _state = new int[helpers];
        for (int i = 0; i < _threads.Length; i++)
        {
            int part = i + 1;
            _threads[i] = new Thread(() => Loop(part)) { IsBackground = true, Name = $"EmaGen update {part}" };
            _threads[i].Start();
        }
    }

    /// <summary>Whether runs are regions on LibTorch's OpenMP team (else helper threads of the pool's own).</summary>
    public bool RunsOnLibTorchTeam => _openMp;

    /// <summary>Threads a run uses, the caller's included.</summary>
    public int Parallelism { get; }

    /// <summary>
    /// Wakes sleeping helpers now, so that they are running when the next <see cref="Run"/> comes; until then they
    /// share <paramref name="ahead"/> (the step's pointer reads) with the caller.
    /// </summary>
    public void WakeAhead(IAheadWork? ahead = null)
    {
        if (_openMp) return;
        _ahead = ahead;
        for (int i = 0; i < _threads.Length; i++)
        {
            if (Interlocked.CompareExchange(ref _state[i], Awake, Sleeping) == Sleeping) Set(i);
        }
    }

    /// <summary>Runs <paramref name="work"/> split into <see cref="Parallelism"/> parts and returns when all are done.</summary>
    public void Run(IPartitionedWork work)
    {
        if (!_openMp && _threads.Length == 0)
        {
            work.Execute(0, 1);
            return;
        }
        _parts = Parallelism;
        _failure = null;
        if (_openMp) RunRegion(work);
        else RunOnHelpers(work);
        if (_failure is { } failure) throw new InvalidOperationException("An EMA update thread failed.", failure);
    }

    // One parallel region on LibTorch's team; each of its threads runs its part (RegionBody).
    private void RunRegion(IPartitionedWork work)
    {
        _work = work;
        try
        {
            OpenMpTeam.Run(&RegionBody, (void*)GCHandle.ToIntPtr(_self), Parallelism);
        }
        finally
        {
            _work = null;
        }
    }

    private void RunOnHelpers(IPartitionedWork work)
    {
        _remaining = _threads.Length;
        Reset(Done);
        _work = work;
        for (int i = 0; i < _threads.Length; i++)
        {
            // A helper spinning after WakeAhead sees the work; a sleeping one (or one that gave up) is woken.
            if (Interlocked.Exchange(ref _state[i], Assigned) == Sleeping) Set(i);
        }
        try
        {
            work.Execute(0, _parts);
        }
        finally
        {
            long deadline = Stopwatch.GetTimestamp() + FinishSpin;
            while (Volatile.Read(ref _remaining) != 0 && Stopwatch.GetTimestamp() < deadline) Thread.SpinWait(16);
            Wait(Done);
            _work = null;
        }
    }

    [UnmanagedCallersOnly]
    private static void RegionBody(void* state)
    {
        var pool = (CpuWorkerPool)GCHandle.FromIntPtr((IntPtr)state).Target!;
        try
        {
            pool._work!.Execute(OpenMpTeam.ThreadNumber, pool._parts);
        }
        catch (Exception e)
        {
            pool._failure = e;
        }
    }

    private void Loop(int part)
    {
        int index = part - 1;
        while (true)
        {
            Wait(index);
            Reset(index);
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
            if (Interlocked.Decrement(ref _remaining) == 0) Set(Done);
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
        if (_self.IsAllocated) _self.Free();
        _stopping = true;
        for (int i = 0; i < _threads.Length; i++) Set(i);
        foreach (var thread in _threads) thread.Join();
    }

    private int Done => _signalLock.Length - 1;

    private void Set(int signal)
    {
        lock (_signalLock[signal])
        {
            Volatile.Write(ref _signalSet[signal], true);
            Monitor.PulseAll(_signalLock[signal]);
        }
    }

    private void Reset(int signal) => Volatile.Write(ref _signalSet[signal], false);

    private void Wait(int signal)
    {
        var spinner = new SpinWait();
        for (int i = 0; i < SignalSpins && !Volatile.Read(ref _signalSet[signal]); i++) spinner.SpinOnce(sleep1Threshold: -1);
        if (Volatile.Read(ref _signalSet[signal])) return;
        lock (_signalLock[signal])
        {
            while (!Volatile.Read(ref _signalSet[signal])) Monitor.Wait(_signalLock[signal]);
        }
    }
}

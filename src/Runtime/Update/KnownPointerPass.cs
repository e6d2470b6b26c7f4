using System;
using System.Runtime.Intrinsics.X86;
using System.Threading;
using TorchSharp;

namespace EmaGen;

/// <summary>Work a woken update helper can share before it is handed the update itself.</summary>
internal interface IAheadWork
{
    /// <summary>Takes pieces of the work until none are left; returns at once when there is none.</summary>
    void Help();
}

/// <summary>
/// Reads the data pointers of the tensors a model held at the last step, so that a step's check costs a reference
/// compare per unchanged tensor. Each read is a LibTorch call at the end of a chain of dependent cache misses (the
/// Parameter object, its native handle, the TensorImpl, the StorageImpl). So each block of tensors is first touched
/// level by level with loads that do not depend on each other (many misses in flight), and the blocks are shared with
/// the update helpers woken at the start of the step (<see cref="CpuWorkerPool.WakeAhead"/>): a second core keeps
/// its own misses in flight. From a cold cache at 1,000 tensors the pass took 0.17-0.27 ms on the caller alone
/// (tests/Benchmarks <c>overhead</c>, pointer_pass), where the same reads one by one took 0.28-0.33 ms.
/// Nothing is decided from the prefetches; a tensor whose object changed is read again by the caller.
/// </summary>
internal sealed unsafe class KnownPointerPass : IAheadWork
{
    private const int BlockSize = 64;

    private readonly torch.Tensor?[] _known;
    private readonly IntPtr[] _read;
    private readonly int _blocks;
    private int _next;
    private int _finished;

    /// <param name="known">The tensors to read (read again at every <see cref="Arm"/>ed pass).</param>
    /// <param name="read">Receives, per tensor, its data pointer (zero for none or a disposed tensor).</param>
    public KnownPointerPass(torch.Tensor?[] known, IntPtr[] read)
    {
        _known = known;
        _read = read;
        _blocks = (known.Length + BlockSize - 1) / BlockSize;
        _next = _blocks;
        _finished = _blocks;
    }

    /// <summary>
    /// Makes the blocks available to <see cref="Help"/> and <see cref="Complete"/>. Every pass armed must be completed
    /// before the next is armed, so that no helper is still inside a block of the old pass.
    /// </summary>
    public void Arm()
    {
        // Finished before next: a helper still leaving the last pass either finds no block or takes one of this pass,
        // which then counts toward this pass.
        Volatile.Write(ref _finished, 0);
        Volatile.Write(ref _next, 0);
    }

    public void Help()
    {
        int block;
        // The read first: a helper polls this while it waits, and must not move the counter once the blocks are out.
        while (Volatile.Read(ref _next) < _blocks && (block = Interlocked.Increment(ref _next) - 1) < _blocks)
        {
            ReadBlock(block * BlockSize, Math.Min(_known.Length, (block + 1) * BlockSize));
            Interlocked.Increment(ref _finished);
        }
    }

    /// <summary>Reads the blocks nobody has taken, then waits for those the helpers took (a block is microseconds).</summary>
    public void Complete()
    {
        Help();
        var spinner = new SpinWait();
        while (Volatile.Read(ref _finished) < _blocks) spinner.SpinOnce(sleep1Threshold: -1);
    }

    private void ReadBlock(int from, int to)
    {
        for (int i = from; i < to; i++)
        {
            var tensor = _known[i];
            _read[i] = tensor is null || tensor.IsInvalid ? IntPtr.Zero : tensor.Handle;
        }
        if (Sse.IsSupported) Prefetch(_read, from, to);
        for (int i = from; i < to; i++)
        {
            if (_read[i] != IntPtr.Zero) _read[i] = NativeTensor.DataPointerOfHandle(_read[i]);
        }
    }

    // Level by level over a block of handles; only loads and prefetches, so a wrong guess about LibTorch's layout costs
    // a useless line, never a wrong answer.
    private static void Prefetch(IntPtr[] handles, int from, int to)
    {
        for (int i = from; i < to; i++)
        {
            if (handles[i] != IntPtr.Zero) Sse.Prefetch0((void*)handles[i]);
        }
        // LibTorchSharp's handle points at an at::Tensor, whose only member is its TensorImpl pointer; c10::TensorImpl
        // keeps its StorageImpl pointer right after the 24-byte intrusive_ptr_target header.
        for (int i = from; i < to; i++)
        {
            if (handles[i] == IntPtr.Zero) continue;
            byte* impl = *(byte**)handles[i];
            if (impl == null) continue;
            Sse.Prefetch0(impl);
            Sse.Prefetch0(impl + 64);
            Sse.Prefetch0(impl + 128);
        }
        for (int i = from; i < to; i++)
        {
            if (handles[i] == IntPtr.Zero) continue;
            byte* impl = *(byte**)handles[i];
            if (impl == null) continue;
            // data_ptr() reads the StorageImpl's data pointer and, on its second line, its access-check flags.
            byte* storage = *(byte**)(impl + 24);
            Sse.Prefetch0(storage);
            Sse.Prefetch0(storage + 64);
        }
    }
}

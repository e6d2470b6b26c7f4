using System;
using System.Runtime.Intrinsics.X86;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// Reads the data pointers of the tensors a model held at the last step, so that a step's check costs a reference
/// compare per unchanged tensor. Each read is a LibTorch call at the end of a chain of dependent cache misses (the
/// Parameter object, its native handle, the TensorImpl, the StorageImpl). So each block of tensors is first touched
/// level by level with loads that do not depend on each other (many misses in flight): from a cold cache at 1,000
/// tensors the pass takes 0.18-0.21 ms (tests/Benchmarks <c>overhead</c>, pointer_pass) where the same reads one by one
/// took 0.28-0.33 ms when this was written. A helper thread reading half of them was slower then (0.24-0.29 ms: waking
/// it cost more than it saved), so this runs on the caller.
/// Nothing is decided from the prefetches; a tensor whose object changed is read again by the caller.
/// </summary>
internal static unsafe class KnownPointerPass
{
    private const int BlockSize = 64;

    /// <summary>Reads into <paramref name="read"/>[i] the data pointer of <paramref name="known"/>[i] (zero for none or a disposed tensor).</summary>
    public static void Read(torch.Tensor?[] known, IntPtr[] read)
    {
        for (int from = 0; from < known.Length; from += BlockSize)
        {
            int to = Math.Min(known.Length, from + BlockSize);
            for (int i = from; i < to; i++)
            {
                var tensor = known[i];
                read[i] = tensor is null || tensor.IsInvalid ? IntPtr.Zero : tensor.Handle;
            }
            if (Sse.IsSupported) Prefetch(read, from, to);
            for (int i = from; i < to; i++)
            {
                if (read[i] != IntPtr.Zero) read[i] = NativeTensor.DataPointerOfHandle(read[i]);
            }
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

using System;
using System.Runtime.Intrinsics.X86;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// Every step reads each parameter's data pointer (and, the first time, its layout) from LibTorch, so that a
/// re-pointed parameter is never averaged from stale memory. On a cold cache that is a chain of dependent misses per
/// tensor (the Parameter object, its native handle, the TensorImpl, the StorageImpl), taken one tensor at a time: 0.78
/// ms of a 4 ms update at 1,000 tensors (tests/Benchmarks, 5M/1000). This pass touches the same lines for all tensors
/// first, with loads that do not depend on each other, so the core keeps many misses in flight; the walk then finds
/// them cached (0.45-0.49 ms). It only loads and prefetches: nothing is decided from what it reads. Shared by the
/// dense engine and the sharded manager.
/// </summary>
internal static unsafe class TensorMetadataWarmer
{
    // Below this many tensors the walk's misses are too few to be worth a pass of their own.
    private const int Minimum = 64;

    /// <param name="tensors">The tensors the last step used (nulls skipped).</param>
    /// <param name="scratch">Room for one pointer per tensor, owned by the caller (no allocation per step).</param>
    public static void Warm(torch.Tensor?[] tensors, IntPtr[] scratch)
    {
        if (tensors.Length < Minimum || !Sse.IsSupported) return;
        for (int i = 0; i < tensors.Length; i++)
        {
            var known = tensors[i];
            scratch[i] = known is null || known.IsInvalid ? IntPtr.Zero : known.Handle;
        }
        for (int i = 0; i < scratch.Length; i++)
        {
            if (scratch[i] != IntPtr.Zero) Sse.Prefetch0((void*)scratch[i]);
        }
        // LibTorchSharp's handle points at an at::Tensor, whose first word is its TensorImpl.
        for (int i = 0; i < scratch.Length; i++)
        {
            if (scratch[i] == IntPtr.Zero) continue;
            byte* impl = *(byte**)scratch[i];
            scratch[i] = (IntPtr)impl;
            if (impl == null) continue;
            Sse.Prefetch0(impl);
            Sse.Prefetch0(impl + 64);
            Sse.Prefetch0(impl + 128);
        }
        // c10::TensorImpl keeps its StorageImpl pointer right after the 24-byte intrusive_ptr_target header; the data
        // pointer lives in the StorageImpl. A wrong guess here would only prefetch a useless line.
        for (int i = 0; i < scratch.Length; i++)
        {
            if (scratch[i] == IntPtr.Zero) continue;
            Sse.Prefetch0(*(byte**)((byte*)scratch[i] + 24));
        }
    }
}

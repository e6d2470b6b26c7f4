using System;
using System.Runtime.InteropServices;

namespace EmaGen;

/// <summary>
/// The LibTorchSharp exports the CPU update path needs directly: a tensor's data pointer (storage base plus offset),
/// and its storage size (whether it owns its storage alone, which packing requires). TorchSharp exposes it only through <c>Tensor.bytes</c>, which also checks and builds a span per call; this
/// is a single call that allocates nothing, so the per-step pointer check stays free of managed allocations.
/// </summary>
internal static partial class NativeTensor
{
    // Read for every averaged tensor on every step. It returns at once and never calls back into .NET (a failure is
    // caught inside LibTorchSharp), so the GC transition, a measurable share of 1,000 calls, is skipped.
    [LibraryImport("LibTorchSharp", EntryPoint = "THSTensor_data")]
    [SuppressGCTransition]
    private static partial IntPtr TensorData(IntPtr tensor);

    [LibraryImport("LibTorchSharp", EntryPoint = "THSStorage_nbytes")]
    private static partial ulong StorageBytes(IntPtr tensor);

    public static IntPtr DataPointer(TorchSharp.torch.Tensor tensor) => TensorData(tensor.Handle);

    /// <summary>The data pointer of a CPU tensor, zero for a tensor on another device (which the raw kernels never touch).</summary>
    public static IntPtr CpuDataPointer(TorchSharp.torch.Tensor tensor) =>
        tensor.device_type == TorchSharp.DeviceType.CPU ? DataPointer(tensor) : IntPtr.Zero;

    /// <summary>The data pointer of the tensor behind a live handle (read once from <c>Tensor.Handle</c>).</summary>
    public static IntPtr DataPointerOfHandle(IntPtr handle) => TensorData(handle);

    /// <summary>Bytes of the storage behind <paramref name="tensor"/> (more than its own when it is a view of a larger tensor).</summary>
    public static long StorageByteCount(TorchSharp.torch.Tensor tensor) => (long)StorageBytes(tensor.Handle);
}

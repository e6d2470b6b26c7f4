using System;
using System.Runtime.InteropServices;

namespace EmaGen;

/// <summary>
/// LibTorchSharp exports that bind and packing need directly: a tensor's data pointer (read through
/// <see cref="LiveSlots.DataPointer"/>, the per-step reader) and its storage size (whether it owns its storage alone,
/// which packing requires).
/// </summary>
internal static partial class NativeTensor
{
    [LibraryImport("LibTorchSharp", EntryPoint = "THSStorage_nbytes")]
    private static partial ulong StorageBytes(IntPtr tensor);

    public static IntPtr DataPointer(TorchSharp.torch.Tensor tensor) => LiveSlots.DataPointer(tensor);

    /// <summary>The data pointer of a CPU tensor, zero for a tensor on another device (which the raw kernels never touch).</summary>
    public static IntPtr CpuDataPointer(TorchSharp.torch.Tensor tensor) =>
        tensor.device_type == TorchSharp.DeviceType.CPU ? DataPointer(tensor) : IntPtr.Zero;

    /// <summary>Bytes of the storage behind <paramref name="tensor"/> (more than its own when it is a view of a larger tensor).</summary>
    public static long StorageByteCount(TorchSharp.torch.Tensor tensor) => (long)StorageBytes(tensor.Handle);
}

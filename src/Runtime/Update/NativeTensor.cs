using System;
using System.Runtime.InteropServices;

namespace EmaGen;

/// <summary>
/// The one LibTorchSharp export the CPU update path needs directly: a tensor's data pointer (storage base plus
/// offset). TorchSharp exposes it only through <c>Tensor.bytes</c>, which also checks and builds a span per call; this
/// is a single call that allocates nothing, so the per-step pointer check stays free of managed allocations.
/// </summary>
internal static partial class NativeTensor
{
    [LibraryImport("LibTorchSharp", EntryPoint = "THSTensor_data")]
    private static partial IntPtr TensorData(IntPtr tensor);

    public static IntPtr DataPointer(TorchSharp.torch.Tensor tensor) => TensorData(tensor.Handle);
}

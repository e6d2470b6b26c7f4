using System;
using TorchSharp;

namespace EmaGen.Dcp;

/// <summary>Between the checkpoint library's host tensors and TorchSharp tensors.</summary>
internal static class TorchTensors
{
    /// <summary>The TorchSharp type of a checkpoint dtype the format code reads (one with a storage class).</summary>
    public static torch.ScalarType TypeOf(CheckpointDType dtype) =>
        DTypes.TryGetByTorchName(dtype.TorchName, out var info) && info.Type is { } type
            ? type
            : throw new CheckpointFormatException($"dtype {dtype.TorchName} is not supported by TorchSharp.");

    /// <summary>A TorchSharp copy of <paramref name="host"/> (caller-owned), which is freed.</summary>
    public static unsafe torch.Tensor Adopt(HostTensor host)
    {
        using (host)
        {
            var tensor = torch.empty(host.Shape, TypeOf(host.DType));
            Buffer.MemoryCopy(host.Data, (void*)NativeTensor.DataPointer(tensor), host.ByteLength, host.ByteLength);
            return tensor;
        }
    }
}

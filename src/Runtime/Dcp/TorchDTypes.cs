using System.Collections.Generic;
using TorchSharp;

namespace EmaGen.Dcp;

/// <summary>PyTorch dtype names (as pickled: <c>torch float32</c>) and their TorchSharp types, element sizes and storage classes (a view of the internal dtype table).</summary>
internal static class TorchDTypes
{
    /// <summary>The PyTorch name of a TorchSharp dtype (<c>Float32</c> → <c>float32</c>).</summary>
    public static string NameOf(torch.ScalarType type) => DTypes.Of(type).TorchName;

    /// <summary>The TorchSharp dtype for a PyTorch name, or false where TorchSharp 0.107 lacks it (float8, uint16/32/64, ...).</summary>
    public static bool TryGet(string name, out torch.ScalarType type, out int elementSize)
    {
        if (DTypes.TryGetByTorchName(name, out var info) && info.Type is { } known)
        {
            type = known;
            elementSize = info.Size;
            return true;
        }
        type = default;
        elementSize = 0;
        return false;
    }

    /// <summary>The TorchSharp dtype for a PyTorch name, or a <see cref="CheckpointFormatException"/> naming <paramref name="source"/>.</summary>
    internal static torch.ScalarType Get(string name, string source, out int elementSize) =>
        TryGet(name, out var type, out elementSize)
            ? type
            : throw new CheckpointFormatException($"{source}: dtype {name} is not supported by TorchSharp.");


    /// <summary>The legacy typed storage class torch.save uses for a dtype (<c>FloatStorage</c>, ...).</summary>
    public static string StorageClassOf(torch.ScalarType type) =>
        DTypes.Of(type).StorageClass ?? throw new KeyNotFoundException($"dtype {type} has no torch.save storage class");
}

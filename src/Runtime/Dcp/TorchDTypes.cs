using System.Collections.Generic;
using TorchSharp;

namespace EmaGen.Dcp;

/// <summary>PyTorch dtype names (as pickled: <c>torch float32</c>) and their TorchSharp types, element sizes and storage classes.</summary>
public static class TorchDTypes
{
    private static readonly Dictionary<string, (torch.ScalarType Type, int Size, string? Storage)> ByName = new()
    {
        ["float32"] = (torch.ScalarType.Float32, 4, "FloatStorage"),
        ["float64"] = (torch.ScalarType.Float64, 8, "DoubleStorage"),
        ["float16"] = (torch.ScalarType.Float16, 2, "HalfStorage"),
        ["bfloat16"] = (torch.ScalarType.BFloat16, 2, "BFloat16Storage"),
        ["int64"] = (torch.ScalarType.Int64, 8, "LongStorage"),
        ["int32"] = (torch.ScalarType.Int32, 4, "IntStorage"),
        ["int16"] = (torch.ScalarType.Int16, 2, "ShortStorage"),
        ["int8"] = (torch.ScalarType.Int8, 1, "CharStorage"),
        ["uint8"] = (torch.ScalarType.Byte, 1, "ByteStorage"),
        ["bool"] = (torch.ScalarType.Bool, 1, "BoolStorage"),
        ["complex64"] = (torch.ScalarType.ComplexFloat32, 8, "ComplexFloatStorage"),
        ["complex128"] = (torch.ScalarType.ComplexFloat64, 16, "ComplexDoubleStorage"),
    };

    /// <summary>The PyTorch name of a TorchSharp dtype (<c>Float32</c> → <c>float32</c>).</summary>
    public static string NameOf(torch.ScalarType type)
    {
        foreach (var (name, info) in ByName) if (info.Type == type) return name;
        throw new KeyNotFoundException($"dtype {type} has no PyTorch checkpoint name");
    }

    /// <summary>The TorchSharp dtype for a PyTorch name, or false where TorchSharp 0.107 lacks it (float8, uint16/32/64, ...).</summary>
    public static bool TryGet(string name, out torch.ScalarType type, out int elementSize)
    {
        if (ByName.TryGetValue(name, out var info))
        {
            type = info.Type;
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

    /// <summary>Bytes per element of a dtype checkpoints can hold.</summary>
    internal static int ElementSize(torch.ScalarType type) => ByName[NameOf(type)].Size;

    /// <summary>The legacy typed storage class torch.save uses for a dtype (<c>FloatStorage</c>, ...).</summary>
    public static string StorageClassOf(torch.ScalarType type) => ByName[NameOf(type)].Storage!;
}

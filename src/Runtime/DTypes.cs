using System.Collections.Generic;
using TorchSharp;

namespace EmaGen;

/// <summary>One dtype as the runtime knows it: the checkpoint row and TorchSharp's type (null where TorchSharp 0.107 lacks it).</summary>
internal sealed record DTypeInfo(CheckpointDType Row, torch.ScalarType? Type)
{
    public string TorchName => Row.TorchName;

    public int Size => Row.Size;

    public string? StorageClass => Row.StorageClass;

    public string? SafetensorsCode => Row.SafetensorsCode;

    /// <summary>Averaged (fp16, bf16, fp32, fp64) rather than copied.</summary>
    public bool IsFloatingPoint => Row.IsFloatingPoint;
}

/// <summary>
/// The checkpoint dtype table (<see cref="CheckpointDTypes"/>) seen through TorchSharp: element sizes for the shadow
/// arena (no probe tensors), which dtypes are averaged and which shadow dtype a parameter gets.
/// </summary>
internal static class DTypes
{
    // Every checkpoint dtype that has a storage class is one TorchSharp holds.
    private static readonly Dictionary<string, torch.ScalarType> Torch = new()
    {
        ["float32"] = torch.ScalarType.Float32,
        ["float64"] = torch.ScalarType.Float64,
        ["float16"] = torch.ScalarType.Float16,
        ["bfloat16"] = torch.ScalarType.BFloat16,
        ["int64"] = torch.ScalarType.Int64,
        ["int32"] = torch.ScalarType.Int32,
        ["int16"] = torch.ScalarType.Int16,
        ["int8"] = torch.ScalarType.Int8,
        ["uint8"] = torch.ScalarType.Byte,
        ["bool"] = torch.ScalarType.Bool,
        ["complex64"] = torch.ScalarType.ComplexFloat32,
        ["complex128"] = torch.ScalarType.ComplexFloat64,
    };

    public static readonly IReadOnlyList<DTypeInfo> All;

    private static readonly Dictionary<string, DTypeInfo> ByTorchName = new();
    private static readonly Dictionary<torch.ScalarType, DTypeInfo> ByType = new();

    static DTypes()
    {
        var all = new List<DTypeInfo>();
        foreach (var row in CheckpointDTypes.All)
        {
            var d = new DTypeInfo(row, Torch.TryGetValue(row.TorchName, out var type) ? type : null);
            all.Add(d);
            ByTorchName.Add(d.TorchName, d);
            if (d.Type is { } t) ByType.Add(t, d);
        }
        All = all;
    }

    public static bool TryGet(torch.ScalarType type, out DTypeInfo info) => ByType.TryGetValue(type, out info!);

    /// <summary>The row of a TorchSharp dtype.</summary>
    /// <exception cref="KeyNotFoundException">EmaGen has no row for it (quantized and other exotic types).</exception>
    public static DTypeInfo Of(torch.ScalarType type) =>
        ByType.TryGetValue(type, out var info) ? info : throw new KeyNotFoundException($"dtype {type} has no PyTorch checkpoint name");

    public static bool TryGetByTorchName(string name, out DTypeInfo info) => ByTorchName.TryGetValue(name, out info!);

    public static bool TryGetByStorageClass(string storageClass, out DTypeInfo info)
    {
        info = null!;
        return CheckpointDTypes.TryGetByStorageClass(storageClass, out var row) && ByTorchName.TryGetValue(row.TorchName, out info!);
    }

    public static bool TryGetBySafetensorsCode(string code, out DTypeInfo info)
    {
        info = null!;
        return CheckpointDTypes.TryGetBySafetensorsCode(code, out var row) && ByTorchName.TryGetValue(row.TorchName, out info!);
    }

    /// <summary>Bytes per element.</summary>
    public static int SizeOf(torch.ScalarType type) => Of(type).Size;

    /// <summary>Averaged (floating point) rather than copied.</summary>
    public static bool IsFloatingPoint(torch.ScalarType type) => ByType.TryGetValue(type, out var info) && info.IsFloatingPoint;

    /// <summary>The shadow dtype of a parameter: fp32 for bf16/fp16 unless low precision is asked for, else its own.</summary>
    public static torch.ScalarType ShadowDTypeFor(torch.ScalarType parameter, bool lowPrecision) =>
        !lowPrecision && parameter is torch.ScalarType.BFloat16 or torch.ScalarType.Float16 ? torch.ScalarType.Float32 : parameter;
}

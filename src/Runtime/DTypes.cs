using System.Collections.Generic;
using TorchSharp;

namespace EmaGen;

/// <summary>One dtype as EmaGen knows it: PyTorch's name, TorchSharp's type (null where TorchSharp 0.107 lacks it), bytes per element, torch.save's legacy storage class and the safetensors code.</summary>
internal sealed record DTypeInfo(string TorchName, torch.ScalarType? Type, int Size, string? StorageClass, string? SafetensorsCode)
{
    /// <summary>Averaged (fp16, bf16, fp32, fp64) rather than copied.</summary>
    public bool IsFloatingPoint => Type is torch.ScalarType.Float16 or torch.ScalarType.BFloat16 or torch.ScalarType.Float32 or torch.ScalarType.Float64;
}

/// <summary>
/// Every fact about dtypes in one table: checkpoint names and sizes (the pickle whitelist, DCP metadata, torch.save
/// records), safetensors codes, element sizes for the shadow arena (no probe tensors), which dtypes are averaged and
/// which shadow dtype a parameter gets. A new dtype is one row here (plus a kernel in <c>Update/</c> if it should not
/// go through TorchSharp ops).
/// </summary>
internal static class DTypes
{
    public static readonly IReadOnlyList<DTypeInfo> All = new DTypeInfo[]
    {
        new("float32", torch.ScalarType.Float32, 4, "FloatStorage", "F32"),
        new("float64", torch.ScalarType.Float64, 8, "DoubleStorage", "F64"),
        new("float16", torch.ScalarType.Float16, 2, "HalfStorage", "F16"),
        new("bfloat16", torch.ScalarType.BFloat16, 2, "BFloat16Storage", "BF16"),
        new("int64", torch.ScalarType.Int64, 8, "LongStorage", "I64"),
        new("int32", torch.ScalarType.Int32, 4, "IntStorage", "I32"),
        new("int16", torch.ScalarType.Int16, 2, "ShortStorage", "I16"),
        new("int8", torch.ScalarType.Int8, 1, "CharStorage", "I8"),
        new("uint8", torch.ScalarType.Byte, 1, "ByteStorage", "U8"),
        new("bool", torch.ScalarType.Bool, 1, "BoolStorage", "BOOL"),
        new("complex64", torch.ScalarType.ComplexFloat32, 8, "ComplexFloatStorage", null),
        new("complex128", torch.ScalarType.ComplexFloat64, 16, "ComplexDoubleStorage", null),
        // Names a PyTorch checkpoint may carry that TorchSharp 0.107 cannot hold: accepted by the pickle reader (so the
        // error names the dtype), refused when a tensor of them would be read.
        new("float8_e5m2", null, 1, null, null),
        new("float8_e4m3fn", null, 1, null, null),
        new("float8_e5m2fnuz", null, 1, null, null),
        new("float8_e4m3fnuz", null, 1, null, null),
        new("float8_e8m0fnu", null, 1, null, null),
        new("uint16", null, 2, null, null),
        new("uint32", null, 4, null, null),
        new("uint64", null, 8, null, null),
        new("complex32", null, 4, null, null),
    };

    private static readonly Dictionary<string, DTypeInfo> ByTorchName = new();
    private static readonly Dictionary<torch.ScalarType, DTypeInfo> ByType = new();
    private static readonly Dictionary<string, DTypeInfo> ByStorageClass = new();
    private static readonly Dictionary<string, DTypeInfo> BySafetensorsCode = new();

    static DTypes()
    {
        foreach (var d in All)
        {
            ByTorchName.Add(d.TorchName, d);
            if (d.Type is { } type) ByType.Add(type, d);
            if (d.StorageClass is { } storage) ByStorageClass.Add(storage, d);
            if (d.SafetensorsCode is { } code) BySafetensorsCode.Add(code, d);
        }
    }

    public static bool TryGet(torch.ScalarType type, out DTypeInfo info) => ByType.TryGetValue(type, out info!);

    /// <summary>The row of a TorchSharp dtype.</summary>
    /// <exception cref="KeyNotFoundException">EmaGen has no row for it (quantized and other exotic types).</exception>
    public static DTypeInfo Of(torch.ScalarType type) =>
        ByType.TryGetValue(type, out var info) ? info : throw new KeyNotFoundException($"dtype {type} has no PyTorch checkpoint name");

    public static bool TryGetByTorchName(string name, out DTypeInfo info) => ByTorchName.TryGetValue(name, out info!);

    public static bool TryGetByStorageClass(string storageClass, out DTypeInfo info) => ByStorageClass.TryGetValue(storageClass, out info!);

    public static bool TryGetBySafetensorsCode(string code, out DTypeInfo info) => BySafetensorsCode.TryGetValue(code, out info!);

    /// <summary>Bytes per element.</summary>
    public static int SizeOf(torch.ScalarType type) => Of(type).Size;

    /// <summary>Averaged (floating point) rather than copied.</summary>
    public static bool IsFloatingPoint(torch.ScalarType type) => ByType.TryGetValue(type, out var info) && info.IsFloatingPoint;

    /// <summary>The shadow dtype of a parameter: fp32 for bf16/fp16 unless low precision is asked for, else its own.</summary>
    public static torch.ScalarType ShadowDTypeFor(torch.ScalarType parameter, bool lowPrecision) =>
        !lowPrecision && parameter is torch.ScalarType.BFloat16 or torch.ScalarType.Float16 ? torch.ScalarType.Float32 : parameter;
}

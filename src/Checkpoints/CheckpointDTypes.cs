using System.Collections.Generic;

namespace EmaGen;

/// <summary>One dtype as a checkpoint names it: PyTorch's name, bytes per element, torch.save's legacy storage class and the safetensors code.</summary>
internal sealed record CheckpointDType(string TorchName, int Size, string? StorageClass, string? SafetensorsCode)
{
    /// <summary>Averaged (fp16, bf16, fp32, fp64) rather than copied.</summary>
    public bool IsFloatingPoint => TorchName is "float16" or "bfloat16" or "float32" or "float64";
}

/// <summary>
/// Every fact about dtypes the formats need, in one table: checkpoint names and sizes (the pickle whitelist, DCP
/// metadata, torch.save records) and safetensors codes. The runtime maps its TorchSharp types onto these rows
/// (<c>DTypes</c>); a new dtype is one row here (plus its TorchSharp type there).
/// </summary>
internal static class CheckpointDTypes
{
    public static readonly IReadOnlyList<CheckpointDType> All = new CheckpointDType[]
    {
        new("float32", 4, "FloatStorage", "F32"),
        new("float64", 8, "DoubleStorage", "F64"),
        new("float16", 2, "HalfStorage", "F16"),
        new("bfloat16", 2, "BFloat16Storage", "BF16"),
        new("int64", 8, "LongStorage", "I64"),
        new("int32", 4, "IntStorage", "I32"),
        new("int16", 2, "ShortStorage", "I16"),
        new("int8", 1, "CharStorage", "I8"),
        new("uint8", 1, "ByteStorage", "U8"),
        new("bool", 1, "BoolStorage", "BOOL"),
        new("complex64", 8, "ComplexFloatStorage", null),
        new("complex128", 16, "ComplexDoubleStorage", null),
        // Names a PyTorch checkpoint may carry that EmaGen does not hold as tensors: accepted by the pickle reader (so
        // the error names the dtype), refused when a tensor of them would be read.
        new("float8_e5m2", 1, null, null),
        new("float8_e4m3fn", 1, null, null),
        new("float8_e5m2fnuz", 1, null, null),
        new("float8_e4m3fnuz", 1, null, null),
        new("float8_e8m0fnu", 1, null, null),
        new("uint16", 2, null, null),
        new("uint32", 4, null, null),
        new("uint64", 8, null, null),
        new("complex32", 4, null, null),
    };

    private static readonly Dictionary<string, CheckpointDType> ByTorchName = new();
    private static readonly Dictionary<string, CheckpointDType> ByStorageClass = new();
    private static readonly Dictionary<string, CheckpointDType> BySafetensorsCode = new();

    static CheckpointDTypes()
    {
        foreach (var d in All)
        {
            ByTorchName.Add(d.TorchName, d);
            if (d.StorageClass is { } storage) ByStorageClass.Add(storage, d);
            if (d.SafetensorsCode is { } code) BySafetensorsCode.Add(code, d);
        }
    }

    public static bool TryGetByTorchName(string name, out CheckpointDType info) => ByTorchName.TryGetValue(name, out info!);

    public static bool TryGetByStorageClass(string storageClass, out CheckpointDType info) => ByStorageClass.TryGetValue(storageClass, out info!);

    public static bool TryGetBySafetensorsCode(string code, out CheckpointDType info) => BySafetensorsCode.TryGetValue(code, out info!);

    /// <summary>
    /// The row of a dtype whose tensors EmaGen reads and writes (a storage class), or a
    /// <see cref="Dcp.CheckpointFormatException"/> naming <paramref name="source"/>.
    /// </summary>
    public static CheckpointDType Readable(string name, string source) =>
        ByTorchName.TryGetValue(name, out var info) && info.StorageClass is not null
            ? info
            : throw new Dcp.CheckpointFormatException($"{source}: dtype {name} is not supported by TorchSharp.");
}

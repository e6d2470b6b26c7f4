using TorchSharp;

namespace EmaGen;

/// <summary>The (shadow dtype, parameter dtype) pairs the CPU kernels handle.</summary>
internal enum KernelKind : byte
{
    /// <summary>No CPU kernel: the pair goes through TorchSharp ops.</summary>
    None,
    Float32,
    Float64,
    /// <summary>fp32 shadow of a bf16 parameter (the default for bf16 models).</summary>
    Float32FromBFloat16,
    /// <summary>fp32 shadow of an fp16 parameter (the default for fp16 models).</summary>
    Float32FromFloat16,
    /// <summary>bf16 shadow of a bf16 parameter (<see cref="EmaOptions.LowPrecisionShadow"/>); math in fp32 registers.</summary>
    BFloat16,
    /// <summary>fp16 shadow of an fp16 parameter (<see cref="EmaOptions.LowPrecisionShadow"/>); math in fp32.</summary>
    Float16,
    /// <summary>Integer and bool buffers: copied, never averaged (1, 2, 4 or 8 bytes per element).</summary>
    Copy1,
    Copy2,
    Copy4,
    Copy8,
}

internal static class KernelKinds
{
    public static KernelKind For(torch.ScalarType shadow, torch.ScalarType parameter) => (shadow, parameter) switch
    {
        (torch.ScalarType.Float32, torch.ScalarType.Float32) => KernelKind.Float32,
        (torch.ScalarType.Float64, torch.ScalarType.Float64) => KernelKind.Float64,
        (torch.ScalarType.Float32, torch.ScalarType.BFloat16) => KernelKind.Float32FromBFloat16,
        (torch.ScalarType.Float32, torch.ScalarType.Float16) => KernelKind.Float32FromFloat16,
        (torch.ScalarType.BFloat16, torch.ScalarType.BFloat16) => KernelKind.BFloat16,
        (torch.ScalarType.Float16, torch.ScalarType.Float16) => KernelKind.Float16,
        _ when shadow == parameter => parameter switch
        {
            torch.ScalarType.Bool or torch.ScalarType.Byte or torch.ScalarType.Int8 => KernelKind.Copy1,
            torch.ScalarType.Int16 => KernelKind.Copy2,
            torch.ScalarType.Int32 => KernelKind.Copy4,
            torch.ScalarType.Int64 => KernelKind.Copy8,
            _ => KernelKind.None,
        },
        _ => KernelKind.None,
    };

    public static int ShadowElementSize(KernelKind kind) => kind switch
    {
        KernelKind.Float64 or KernelKind.Copy8 => 8,
        KernelKind.BFloat16 or KernelKind.Float16 or KernelKind.Copy2 => 2,
        KernelKind.Copy1 => 1,
        _ => 4,
    };

    public static int ParameterElementSize(KernelKind kind) => kind switch
    {
        KernelKind.Float32 or KernelKind.Copy4 => 4,
        KernelKind.Float64 or KernelKind.Copy8 => 8,
        KernelKind.Copy1 => 1,
        _ => 2,
    };
}

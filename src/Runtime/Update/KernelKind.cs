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

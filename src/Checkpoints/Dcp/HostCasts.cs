using System;
using System.Numerics.Tensors;

namespace EmaGen.Dcp;

/// <summary>
/// Floating-point conversion and accumulation over host tensor bytes, in blocks through fp32 (as PyTorch converts
/// fp64 to bf16/fp16: through float), rounding to nearest even like LibTorch.
/// </summary>
internal static unsafe class HostCasts
{
    private const int Block = 1 << 16;

    /// <summary>Whether <paramref name="dtype"/> converts through fp32 (fp16, bf16, fp32, fp64).</summary>
    public static bool IsFloat(CheckpointDType dtype) => dtype.IsFloatingPoint;

    /// <summary>Converts <paramref name="count"/> elements of <paramref name="from"/> at <paramref name="source"/> to <paramref name="to"/> at <paramref name="target"/>.</summary>
    public static void Convert(byte* source, CheckpointDType from, byte* target, CheckpointDType to, long count)
    {
        if (from.TorchName == to.TorchName)
        {
            long bytes = checked(count * from.Size);
            Buffer.MemoryCopy(source, target, bytes, bytes);
            return;
        }
        Span<float> buffer = new float[(int)Math.Min(Block, Math.Max(count, 1))];
        for (long done = 0; done < count; done += Block)
        {
            int n = (int)Math.Min(Block, count - done);
            var floats = buffer[..n];
            ToSingle(source + done * from.Size, from, floats);
            FromSingle(floats, to, target + done * to.Size);
        }
    }

    /// <summary><c>sum[i] += alpha · value[i]</c> in fp32 (fused, as LibTorch's <c>add_(value, alpha)</c>), for <paramref name="count"/> elements.</summary>
    public static void AddScaled(float* sum, byte* value, CheckpointDType dtype, float alpha, long count)
    {
        Span<float> buffer = new float[(int)Math.Min(Block, Math.Max(count, 1))];
        for (long done = 0; done < count; done += Block)
        {
            int n = (int)Math.Min(Block, count - done);
            var target = new Span<float>(sum + done, n);
            ReadOnlySpan<float> values;
            if (dtype.TorchName == "float32")
            {
                values = new ReadOnlySpan<float>((float*)value + done, n);
            }
            else
            {
                ToSingle(value + done * dtype.Size, dtype, buffer[..n]);
                values = buffer[..n];
            }
            TensorPrimitives.FusedMultiplyAdd(values, alpha, target, target);
        }
    }

    private static void ToSingle(byte* source, CheckpointDType dtype, Span<float> target)
    {
        int n = target.Length;
        switch (dtype.TorchName)
        {
            case "float32": new ReadOnlySpan<float>(source, n).CopyTo(target); break;
            case "float16": TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(source, n), target); break;
            case "float64": TensorPrimitives.ConvertTruncating<double, float>(new ReadOnlySpan<double>(source, n), target); break;
            case "bfloat16":
                var bits = new ReadOnlySpan<ushort>(source, n);
                for (int i = 0; i < n; i++) target[i] = BitConverter.Int32BitsToSingle(bits[i] << 16);
                break;
            default: throw new ArgumentException($"dtype {dtype.TorchName} is not floating point");
        }
    }

    private static void FromSingle(ReadOnlySpan<float> source, CheckpointDType dtype, byte* target)
    {
        int n = source.Length;
        switch (dtype.TorchName)
        {
            case "float32": source.CopyTo(new Span<float>(target, n)); break;
            case "float16": TensorPrimitives.ConvertToHalf(source, new Span<Half>(target, n)); break;
            case "float64": TensorPrimitives.ConvertTruncating<float, double>(source, new Span<double>(target, n)); break;
            case "bfloat16":
                var bits = new Span<ushort>(target, n);
                for (int i = 0; i < n; i++) bits[i] = ToBFloat16(source[i]);
                break;
            default: throw new ArgumentException($"dtype {dtype.TorchName} is not floating point");
        }
    }

    // c10::BFloat16's round_to_nearest_even: NaN becomes the canonical quiet NaN.
    private static ushort ToBFloat16(float value)
    {
        if (float.IsNaN(value)) return 0x7FC0;
        uint u = BitConverter.SingleToUInt32Bits(value);
        return (ushort)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    }
}

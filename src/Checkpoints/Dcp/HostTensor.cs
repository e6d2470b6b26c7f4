using System;
using System.Runtime.InteropServices;

namespace EmaGen.Dcp;

/// <summary>
/// A tensor in native host memory, C order, little-endian: how the format code holds tensor data without TorchSharp
/// (the runtime reads into its own tensors' memory instead). Any size, not limited to 2 GB.
/// </summary>
internal sealed unsafe class HostTensor : IDisposable
{
    private byte* _data;

    private HostTensor(CheckpointDType dtype, long[] shape, long numel)
    {
        DType = dtype;
        Shape = shape;
        Numel = numel;
        ByteLength = checked(numel * dtype.Size);
        // Never a zero-byte allocation, so an empty tensor still has a valid pointer.
        _data = (byte*)NativeMemory.AlignedAlloc((nuint)Math.Max(ByteLength, 1), 64);
    }

    public CheckpointDType DType { get; }

    public long[] Shape { get; }

    public long Numel { get; }

    public long ByteLength { get; }

    public byte* Data => _data != null ? _data : throw new ObjectDisposedException(nameof(HostTensor));

    /// <summary>An uninitialised tensor of <paramref name="shape"/>.</summary>
    public static HostTensor Allocate(CheckpointDType dtype, long[] shape) => new(dtype, (long[])shape.Clone(), Shapes.Numel(shape));

    /// <summary>The elements as a span (tensors under 2^31 elements).</summary>
    public Span<T> Span<T>() where T : unmanaged => new(Data, checked((int)(ByteLength / sizeof(T))));

    public HostBytes Bytes() => new((nint)Data, ByteLength, null);

    public void Dispose()
    {
        if (_data == null) return;
        NativeMemory.AlignedFree(_data);
        _data = null;
    }
}

/// <summary>Copies between C-order buffers: a box of one into a box of another, and a strided view into C order.</summary>
internal static unsafe class TensorBoxes
{
    /// <summary>
    /// Copies the box <c>[sourceStart, sourceStart + extent)</c> of <paramref name="source"/> (C order, shape
    /// <paramref name="sourceShape"/>) to <c>[targetStart, targetStart + extent)</c> of <paramref name="target"/>.
    /// </summary>
    public static void Copy(byte* source, long[] sourceShape, long[] sourceStart, byte* target, long[] targetShape, long[] targetStart, long[] extent, int elementSize)
    {
        int rank = extent.Length;
        if (rank == 0)
        {
            Buffer.MemoryCopy(source, target, elementSize, elementSize);
            return;
        }
        foreach (var e in extent) if (e == 0) return;
        var sourceStrides = ByteStrides(sourceShape, elementSize);
        var targetStrides = ByteStrides(targetShape, elementSize);
        long sourceBase = 0, targetBase = 0;
        for (int d = 0; d < rank; d++)
        {
            sourceBase += sourceStart[d] * sourceStrides[d];
            targetBase += targetStart[d] * targetStrides[d];
        }
        CopyDim(source + sourceBase, sourceStrides, target + targetBase, targetStrides, extent, 0, extent[rank - 1] * elementSize);
    }

    private static void CopyDim(byte* source, long[] sourceStrides, byte* target, long[] targetStrides, long[] extent, int d, long runBytes)
    {
        if (d == extent.Length - 1)
        {
            Buffer.MemoryCopy(source, target, runBytes, runBytes);
            return;
        }
        for (long i = 0; i < extent[d]; i++)
        {
            CopyDim(source + i * sourceStrides[d], sourceStrides, target + i * targetStrides[d], targetStrides, extent, d + 1, runBytes);
        }
    }

    /// <summary>Writes the view (<paramref name="size"/>, <paramref name="stride"/> in elements, from element <paramref name="offset"/>) of <paramref name="storage"/> to <paramref name="target"/> in C order.</summary>
    public static void Gather(byte* storage, long offset, long[] size, long[] stride, int elementSize, byte* target)
    {
        foreach (var s in size) if (s == 0) return;
        long written = 0;
        GatherDim(storage + offset * elementSize, size, stride, elementSize, target, ref written, 0);
    }

    private static void GatherDim(byte* source, long[] size, long[] stride, int elementSize, byte* target, ref long written, int d)
    {
        if (d == size.Length)
        {
            Buffer.MemoryCopy(source, target + written, elementSize, elementSize);
            written += elementSize;
            return;
        }
        if (d == size.Length - 1 && stride[d] == 1)
        {
            long run = size[d] * elementSize;
            Buffer.MemoryCopy(source, target + written, run, run);
            written += run;
            return;
        }
        for (long i = 0; i < size[d]; i++) GatherDim(source + i * stride[d] * elementSize, size, stride, elementSize, target, ref written, d + 1);
    }

    private static long[] ByteStrides(long[] shape, int elementSize)
    {
        var strides = new long[shape.Length];
        long s = elementSize;
        for (int d = shape.Length - 1; d >= 0; d--)
        {
            strides[d] = s;
            s *= shape[d];
        }
        return strides;
    }
}

using System;
using EmaGen.Dcp.Pickle;
using EmaGen.Dcp.Zip;

namespace EmaGen.Dcp;

/// <summary>A BYTE_IO value EmaGen could not decode safely: the raw pickle, never executed.</summary>
internal sealed record RawPickleValue(byte[] Pickle);

/// <summary>
/// Decodes the items of a DCP data file: one torch.save archive per tensor chunk or non-tensor value (docs/dcp-format.md
/// §3.2-3.4), tensor data read straight into the caller's memory (a runtime tensor's, or a <see cref="HostTensor"/>).
/// <see cref="TorchSaveWriter"/> encodes them.
/// </summary>
internal static class TorchSaveCodec
{
    /// <summary>
    /// Decodes one item. With an <paramref name="expect"/>ation the item must be a tensor of that dtype and shape, checked
    /// before any tensor memory is allocated; without one it may be a tensor (a <see cref="HostTensor"/>) or a plain value.
    /// </summary>
    internal static unsafe object? ReadItem(TorchArchiveReader archive, string source, TensorExpectation? expect)
    {
        var pkl = archive.ReadAll(archive.Get("data.pkl"));
        object? value;
        try
        {
            value = SafePickleReader.Read(pkl, source + " data.pkl");
        }
        catch (CheckpointFormatException) when (expect is null)
        {
            // Arbitrary Python objects (argparse namespaces, numpy state...) are kept as bytes, never executed.
            return new RawPickleValue(pkl);
        }
        if (value is TensorReference reference)
        {
            Checked(reference, expect, source);
            Layout(archive, reference, source);
            var tensor = HostTensor.Allocate(CheckpointDTypes.Readable(reference.DType, source), reference.Size);
            try
            {
                ReadTensorInto(archive, reference, source, tensor.Data);
                return tensor;
            }
            catch
            {
                tensor.Dispose();
                throw;
            }
        }
        if (expect is not null) throw new CheckpointFormatException($"{source}: expected a tensor record, found {SafePickleReader.Describe(value)}.");
        return value;
    }

    /// <summary>The tensor record of an item, checked against <paramref name="expect"/> before any memory is allocated for it.</summary>
    internal static TensorReference ReadTensorRecord(TorchArchiveReader archive, string source, TensorExpectation expect)
    {
        var pkl = archive.ReadAll(archive.Get("data.pkl"));
        if (SafePickleReader.Read(pkl, source + " data.pkl") is not TensorReference t)
        {
            throw new CheckpointFormatException($"{source}: expected a tensor record.");
        }
        Checked(t, expect, source);
        Layout(archive, t, source);
        return t;
    }

    /// <summary>
    /// Rows <c>[rowStart, rowStart + rowCount)</c> (along dimension 0) of a tensor item, reading only their bytes (rounded
    /// to the seal's blocks, each CRC-checked) when the stored tensor is C-contiguous, little-endian and uncompressed and
    /// the item is sealed; without a seal every byte of the record is read to check its CRC, but only the rows are kept.
    /// Returns the rows and the number of data bytes read from the file.
    /// </summary>
    internal static unsafe long ReadTensorRowsInto(
        TorchArchiveReader archive, string source, TensorReference t, long rowStart, long rowCount, ItemSeal? seal, byte* destination)
    {
        int elementSize = CheckpointDTypes.Readable(t.DType, source).Size;
        var record = archive.Get("data/" + t.Storage.Key);
        bool littleEndian = !archive.TryGet("byteorder", out var order) || System.Text.Encoding.ASCII.GetString(archive.ReadAll(order)).Trim() != "big";
        bool plain = t.Size.Length > 0 && t.StorageOffset == 0 && littleEndian && record.Method == 0
            && t.Stride.AsSpan().SequenceEqual(TorchSaveWriter.ContiguousStrides(t.Size)) && t.Storage.StorageType.Name != "UntypedStorage";
        if (rowStart < 0 || rowCount < 0 || (t.Size.Length > 0 && rowStart + rowCount > t.Size[0]))
        {
            throw new CheckpointFormatException($"{source}: rows [{rowStart}, {rowStart + rowCount}) lie outside the stored tensor.");
        }
        long rowElements = 1;
        for (int d = 1; d < t.Size.Length; d++) rowElements = checked(rowElements * t.Size[d]);
        long rowBytes = checked(rowElements * elementSize);
        if (!plain)
        {
            using var whole = HostTensor.Allocate(CheckpointDTypes.Readable(t.DType, source), t.Size);
            ReadTensorInto(archive, t, source, whole.Data);
            long bytes = t.Size.Length == 0 ? whole.ByteLength : rowCount * rowBytes;
            Buffer.MemoryCopy(whole.Data + (t.Size.Length == 0 ? 0 : rowStart * rowBytes), destination, bytes, bytes);
            return record.Size;
        }
        // The storage may be larger than the view (a saved slice); with offset 0 and C-order strides the rows come first.
        if (checked(t.Size[0] * rowBytes) > record.Size || record.Size != checked(t.Storage.Numel * elementSize))
        {
            throw new CheckpointFormatException($"{source}: record data/{t.Storage.Key} has {record.Size} bytes, the tensor needs {t.Size[0] * rowBytes}.");
        }
        return archive.ReadRange(record, rowStart * rowBytes, destination, rowCount * rowBytes, seal?.BlockSize ?? 0, seal?.BlockCrcs);
    }

    // Dtype and shape against what the metadata declares, before a byte of tensor memory is allocated.
    private static TensorReference Checked(TensorReference t, TensorExpectation? expect, string source)
    {
        if (expect is null || expect.DType is null) return t;
        if (t.DType != expect.DType || !t.Size.AsSpan().SequenceEqual(expect.Shape))
        {
            throw new CheckpointFormatException(
                $"{source}: item is {t.DType} ({string.Join(", ", t.Size)}), the metadata declares {expect.DType} ({string.Join(", ", expect.Shape!)}).");
        }
        return t;
    }

    /// <summary>Reads the tensor <paramref name="t"/> of an item to <paramref name="destination"/> (its bytes in C order).</summary>
    internal static unsafe void ReadTensorInto(TorchArchiveReader archive, TensorReference t, string source, byte* destination)
    {
        var (record, storageBytes, storageElements, numel, empty, elementSize) = Layout(archive, t, source);
        bool bigEndian = archive.TryGet("byteorder", out var order) && System.Text.Encoding.ASCII.GetString(archive.ReadAll(order)).Trim() == "big";

        if (empty) return;
        // The common case (what DCP writes): the storage is exactly the tensor in C order, read in place.
        bool direct = t.StorageOffset == 0 && numel == storageElements && t.Stride.AsSpan().SequenceEqual(TorchSaveWriter.ContiguousStrides(t.Size));
        HostTensor? storage = direct ? null : HostTensor.Allocate(CheckpointDTypes.Readable(t.DType, source), [storageElements]);
        try
        {
            byte* data = storage is null ? destination : storage.Data;
            if (storageBytes > 0) archive.ReadInto(record, data, storageBytes);
            if (bigEndian && elementSize > 1) SwapBytes(data, storageElements, elementSize);
            if (storage is not null) TensorBoxes.Gather(storage.Data, t.StorageOffset, t.Size, t.Stride, elementSize, destination);
        }
        finally
        {
            storage?.Dispose();
        }
    }

    // Everything about a tensor record that can be refused before memory is allocated for it.
    private static (ArchiveRecord Record, long StorageBytes, long StorageElements, long Numel, bool Empty, int ElementSize) Layout(
        TorchArchiveReader archive, TensorReference t, string source)
    {
        int elementSize = CheckpointDTypes.Readable(t.DType, source).Size;
        bool untyped = t.Storage.StorageType.Name == "UntypedStorage";
        long storageBytes = untyped ? t.Storage.Numel : checked(t.Storage.Numel * elementSize);
        long storageElements = storageBytes / elementSize;
        if (storageElements * elementSize != storageBytes) throw new CheckpointFormatException($"{source}: storage of {storageBytes} bytes is not whole {t.DType} elements.");

        // Every element the view reaches must lie inside the storage.
        long last = t.StorageOffset;
        bool empty = false;
        long numel = 1;
        for (int i = 0; i < t.Size.Length; i++)
        {
            numel = checked(numel * t.Size[i]);
            if (t.Size[i] == 0) empty = true;
            else last = checked(last + (t.Size[i] - 1) * t.Stride[i]);
        }
        if (!empty && last >= storageElements)
        {
            throw new CheckpointFormatException($"{source}: tensor view reaches element {last} of a {storageElements}-element storage.");
        }

        var record = archive.Get("data/" + t.Storage.Key);
        if (record.Size != storageBytes)
        {
            throw new CheckpointFormatException($"{source}: record data/{t.Storage.Key} has {record.Size} bytes, its storage needs {storageBytes}.");
        }
        // A stored record's bytes are on disk inside the item; a deflated one could claim any size, so it may not hold
        // more than the tensor it backs (a few compressed bytes must not buy gigabytes of memory).
        if (record.Method != 0 && storageBytes > checked(numel * elementSize))
        {
            throw new CheckpointFormatException($"{source}: compressed record data/{t.Storage.Key} inflates to {storageBytes} bytes, more than the {numel * elementSize} its tensor needs.");
        }
        return (record, storageBytes, storageElements, numel, empty, elementSize);
    }

    private static unsafe void SwapBytes(byte* data, long count, int size)
    {
        for (long i = 0; i < count; i++)
        {
            var element = new Span<byte>(data + i * size, size);
            element.Reverse();
        }
    }
}

using System.Collections.Generic;
using TorchSharp;

namespace EmaGen.Dcp;

/// <summary>
/// Reads a DCP folder written by PyTorch (2.x or 1.13) or by EmaGen: any number of files per rank, items in any order,
/// chunked tensors (assembled, or only the part overlapping a requested box), non-tensor values decoded to plain
/// values or kept as raw bytes. Every failure is a <see cref="CheckpointFormatException"/> naming the file and key.
/// The format is read by EmaGen.Checkpoints (<see cref="DcpFolder"/>); this reads its tensors into TorchSharp tensors.
/// </summary>
public sealed class DcpReader : IDcpValues
{
    private DcpReader(DcpFolder folder) => Folder = folder;

    public string Directory => Folder.Directory;

    public DcpMetadata Metadata => Folder.Metadata;

    public IReadOnlyList<DcpEntry> Entries => Folder.Entries;

    /// <summary>The format-level reader underneath.</summary>
    internal DcpFolder Folder { get; }

    /// <summary>Tensor data bytes read so far (a slice of a saved chunk reads only its rows' bytes).</summary>
    internal long BytesRead => Folder.BytesRead;

    /// <summary>Reads the <c>.metadata</c> of <paramref name="directory"/>.</summary>
    public static DcpReader Open(string directory) => new(DcpFolder.Open(directory));

    /// <summary>The whole tensor stored under <paramref name="key"/> (caller-owned), assembled from its chunks.</summary>
    public torch.Tensor ReadTensor(string key)
    {
        var entry = TensorEntry(key);
        return ReadSlice(entry, new long[entry.Size.Length], entry.Size);
    }

    /// <summary>
    /// The box <c>[offsets, offsets + sizes)</c> of tensor <paramref name="key"/>, read from the chunks that overlap it
    /// (others are not touched): how a rank loads its shard of any saved chunking.
    /// </summary>
    public torch.Tensor ReadSlice(string key, long[] offsets, long[] sizes) => ReadSlice(TensorEntry(key), offsets, sizes);

    /// <summary>The non-tensor value stored under <paramref name="key"/>: null, bool, long, double, string, list, <see cref="Pickle.PickleTuple"/>, <see cref="Pickle.PickleDict"/>, <see cref="RawPickleValue"/>, or a tensor.</summary>
    public object? ReadValue(string key)
    {
        var value = Folder.ReadValue(key);
        return value is HostTensor host ? TorchTensors.Adopt(host) : value;
    }

    public DcpTensorEntry TensorEntry(string key) => Folder.TensorEntry(key);

    private torch.Tensor ReadSlice(DcpTensorEntry entry, long[] offsets, long[] sizes) =>
        Folder.ReadSlice(entry, offsets, sizes, (dtype, shape) => torch.empty(shape, TorchTensors.TypeOf(dtype)), NativeTensor.DataPointer);
}

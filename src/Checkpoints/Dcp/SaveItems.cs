using System;
using System.Collections.Generic;

namespace EmaGen.Dcp;

// What the save path writes, as plain data: no TorchSharp type reaches the format side (ZIP records, pickles,
// .metadata, files, commit, swap). TensorChunks turns tensors into these at the edge.

/// <summary>A dtype as the writer needs it: PyTorch's name (in <c>.metadata</c>), torch.save's storage class (in the item's pickle) and bytes per element.</summary>
internal sealed record ChunkDType(string Name, string StorageClass, int ElementSize);

/// <summary>Host memory holding one chunk's bytes, contiguous in C order and little-endian; valid until disposed.</summary>
internal readonly struct HostBytes : IDisposable
{
    private readonly IDisposable? _owner;

    /// <param name="pointer">The first byte.</param>
    /// <param name="length">How many bytes.</param>
    /// <param name="owner">What keeps the memory alive (a host copy made for the write), released by <see cref="Dispose"/>.</param>
    public HostBytes(nint pointer, long length, IDisposable? owner)
    {
        Pointer = pointer;
        Length = length;
        _owner = owner;
    }

    public nint Pointer { get; }

    public long Length { get; }

    public void Dispose() => _owner?.Dispose();
}

/// <summary>
/// Where the writer reads a chunk's bytes: opened right before they are written and closed right after, so a chunk
/// that must first be converted or copied to the host exists only while it is written.
/// </summary>
internal interface IChunkBytes
{
    HostBytes Open();
}

/// <summary>A plain value item: null, bool, integer, double, string, list, tuple or string-keyed dict.</summary>
internal sealed record SaveValue(string Key, object? Value);

/// <summary>One rank's chunk of a tensor: where it sits in the global tensor, and its bytes.</summary>
/// <param name="Key">Flattened key.</param>
/// <param name="DType">The dtype of the chunk (and of the whole tensor).</param>
/// <param name="GlobalSize">Shape of the whole tensor.</param>
/// <param name="Offsets">Where the chunk starts in every dimension.</param>
/// <param name="Sizes">The chunk's extent in every dimension (its shape).</param>
/// <param name="Bytes">The chunk's data.</param>
/// <param name="Replicated">Every rank holds the whole tensor; only rank 0 writes it, so it is stored once.</param>
internal sealed record SaveChunk(string Key, ChunkDType DType, long[] GlobalSize, long[] Offsets, long[] Sizes, IChunkBytes Bytes, bool Replicated = false)
{
    public long ByteCount
    {
        get
        {
            long n = DType.ElementSize;
            foreach (var s in Sizes) n = checked(n * s);
            return n;
        }
    }
}

/// <summary>
/// One rank's part of one checkpoint save, the whole input of <see cref="DcpSave"/>. A save by one process is rank 0
/// of a world of one.
/// </summary>
/// <param name="Directory">The checkpoint folder (created or replaced).</param>
/// <param name="SaveId">Names the staging folder and seals every item; every rank of one save passes the same.</param>
/// <param name="Rank">This rank and the world size.</param>
/// <param name="Values">Plain values, written by rank 0 only.</param>
/// <param name="Chunks">This rank's tensor chunks (replicated ones are written by rank 0 only).</param>
/// <param name="Options">Naming, files per rank and the test hooks.</param>
/// <param name="Timeout">How long rank 0 waits for the other ranks' manifests, and they for its commit.</param>
internal sealed record SaveRequest(string Directory, string SaveId, RankInfo Rank, IReadOnlyList<SaveValue> Values,
    IReadOnlyList<SaveChunk> Chunks, DcpWriteOptions Options, TimeSpan Timeout);

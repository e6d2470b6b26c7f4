using System;
using System.Collections.Generic;

namespace EmaGen.Dcp;

/// <summary>A save by one process from plain data (the tool's and the post-hoc synthesis's), as the runtime's <c>DcpWriter</c> does from tensors.</summary>
internal static class PlainSave
{
    /// <summary>Writes <paramref name="values"/> and <paramref name="tensors"/> (each one full chunk) to <paramref name="directory"/> through <see cref="DcpSave"/>.</summary>
    public static DcpMetadata OneRank(string directory, IEnumerable<KeyValuePair<string, object?>> values, IEnumerable<SaveChunk> tensors, DcpWriteOptions? options = null)
    {
        var plain = new List<SaveValue>();
        foreach (var (key, value) in values) plain.Add(new SaveValue(key, value));
        return DcpSave.Run(new SaveRequest(directory, Guid.NewGuid().ToString("N"), new RankInfo(0, 1), plain, [.. tensors],
            options ?? new DcpWriteOptions(), TimeSpan.Zero))!;
    }

    /// <summary>A whole tensor as one chunk at offset 0, its bytes made by <paramref name="make"/> when written and freed right after.</summary>
    public static SaveChunk Whole(string key, CheckpointDType dtype, long[] shape, Func<HostTensor> make) =>
        new(key, ChunkDTypeOf(dtype), shape, new long[shape.Length], shape, new Made(make));

    public static ChunkDType ChunkDTypeOf(CheckpointDType dtype) =>
        new(dtype.TorchName, dtype.StorageClass ?? throw new ArgumentException($"dtype {dtype.TorchName} cannot be saved"), dtype.Size);

    /// <summary>Bytes of a host tensor made when opened, freed when closed.</summary>
    internal sealed class Made(Func<HostTensor> make) : IChunkBytes
    {
        public HostBytes Open()
        {
            var tensor = make();
            unsafe { return new HostBytes((nint)tensor.Data, tensor.ByteLength, tensor); }
        }
    }
}

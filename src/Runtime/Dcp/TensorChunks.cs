using System;
using System.Collections.Generic;
using TorchSharp;

namespace EmaGen.Dcp;

/// <summary>
/// The edge between TorchSharp and the save path: turns tensors (and the state dicts and shard lists holding them) into
/// the plain chunks and requests <see cref="DcpSave"/> writes. A chunk's bytes are taken from its tensor only when they
/// are written, copied to the host or made contiguous then if they are not already.
/// </summary>
internal static class TensorChunks
{
    /// <summary>
    /// A save by one process of <paramref name="state"/> (flattened keys → <see cref="torch.Tensor"/>,
    /// <see cref="DeferredTensor"/> or plain values), each tensor as one full chunk, under a fresh save id unless
    /// <paramref name="saveId"/> names one.
    /// </summary>
    public static SaveRequest OneRank(string directory, IEnumerable<KeyValuePair<string, object?>> state, DcpWriteOptions? options, string? saveId = null)
    {
        var values = new List<SaveValue>();
        var chunks = new List<SaveChunk>();
        foreach (var (key, value) in state)
        {
            switch (value)
            {
                case torch.Tensor tensor: chunks.Add(Whole(key, tensor)); break;
                case DeferredTensor deferred: chunks.Add(Whole(key, deferred)); break;
                default: values.Add(new SaveValue(key, value)); break;
            }
        }
        return new SaveRequest(directory, saveId ?? Guid.NewGuid().ToString("N"), new RankInfo(0, 1), values, chunks,
            options ?? new DcpWriteOptions(), TimeSpan.Zero);
    }

    /// <summary>This rank's part of a save by all ranks: its <paramref name="shards"/> and (written by rank 0) <paramref name="values"/>.</summary>
    public static SaveRequest Sharded(string directory, string saveId, RankInfo rank, IEnumerable<DcpShard> shards,
        IEnumerable<KeyValuePair<string, object?>>? values, TimeSpan timeout)
    {
        var chunks = new List<SaveChunk>();
        foreach (var shard in shards) chunks.Add(Box(shard.Key, new Local(shard.Local, null), shard.GlobalSize, shard.Offsets, shard.Replicated));
        return Request(directory, saveId, rank, chunks, values, timeout);
    }

    /// <summary>This rank's part of a save by all ranks, from chunks already made (see <see cref="Box"/>).</summary>
    public static SaveRequest Request(string directory, string saveId, RankInfo rank, List<SaveChunk> chunks,
        IEnumerable<KeyValuePair<string, object?>>? values, TimeSpan timeout)
    {
        var plain = new List<SaveValue>();
        foreach (var (key, value) in values ?? []) plain.Add(new SaveValue(key, value));
        return new SaveRequest(directory, saveId, rank, plain, chunks, new DcpWriteOptions(), timeout);
    }

    /// <summary>A box's data: a tensor, or (<see cref="Later"/>) one made only when it is written and freed right after.</summary>
    public readonly record struct Local(torch.Tensor? Tensor, DeferredTensor? Later);

    /// <summary>A copy of <paramref name="tensor"/> in <paramref name="dtype"/>, made only when written.</summary>
    public static Local Deferred(torch.Tensor tensor, torch.ScalarType dtype) => new(null, new DeferredTensor(() =>
    {
        using var _ = torch.no_grad();
        return tensor.to_type(dtype, copy: true);
    }, dtype, tensor.shape));

    /// <summary>One box of a tensor of shape <paramref name="globalSize"/>, starting at <paramref name="offsets"/>.</summary>
    public static SaveChunk Box(string key, Local local, long[] globalSize, long[] offsets, bool replicated)
    {
        var (dtype, shape) = local.Tensor is { } t ? (t.dtype, t.shape) : (local.Later!.DType, local.Later.Shape);
        return new SaveChunk(key, DTypeOf(dtype), globalSize, offsets, shape, new TensorBytes(local.Tensor, local.Later), replicated);
    }

    /// <summary>A whole tensor as one chunk at offset 0.</summary>
    public static SaveChunk Whole(string key, torch.Tensor tensor)
    {
        var shape = tensor.shape;
        return new SaveChunk(key, DTypeOf(tensor.dtype), shape, new long[shape.Length], shape, new TensorBytes(tensor, null));
    }

    private static SaveChunk Whole(string key, DeferredTensor deferred) =>
        new(key, DTypeOf(deferred.DType), deferred.Shape, new long[deferred.Shape.Length], deferred.Shape, new TensorBytes(null, deferred));

    private static ChunkDType DTypeOf(torch.ScalarType type) =>
        new(TorchDTypes.NameOf(type), TorchDTypes.StorageClassOf(type), DTypes.SizeOf(type));

    // A tensor's bytes, or a deferred tensor's, made when opened and freed when closed.
    private sealed class TensorBytes(torch.Tensor? tensor, DeferredTensor? deferred) : IChunkBytes
    {
        public HostBytes Open()
        {
            torch.Tensor? made = null, cpu = null, contiguous = null;
            try
            {
                var host = tensor ?? (made = Make(deferred!));
                if (host.device_type != DeviceType.CPU) host = cpu = host.cpu();
                if (!host.is_contiguous()) host = contiguous = host.contiguous();
                var owner = made is null && cpu is null && contiguous is null ? null : new Owned(contiguous, cpu, made);
                return new HostBytes(NativeTensor.DataPointer(host), host.numel() * host.ElementSize, owner);
            }
            catch
            {
                contiguous?.Dispose();
                cpu?.Dispose();
                made?.Dispose();
                throw;
            }
        }

        private static torch.Tensor Make(DeferredTensor deferred)
        {
            var made = deferred.Make();
            if (made.dtype != deferred.DType || !made.shape.AsSpan().SequenceEqual(deferred.Shape))
            {
                var (dtype, shape) = (made.dtype, made.shape);
                made.Dispose();
                throw new InvalidOperationException(
                    $"a deferred tensor declared {deferred.DType} ({string.Join(", ", deferred.Shape)}) but made {dtype} ({string.Join(", ", shape)})");
            }
            return made;
        }
    }

    private sealed class Owned(params torch.Tensor?[] tensors) : IDisposable
    {
        public void Dispose()
        {
            foreach (var t in tensors) t?.Dispose();
        }
    }
}

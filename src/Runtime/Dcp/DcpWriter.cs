using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using TorchSharp;

namespace EmaGen.Dcp;

/// <summary>
/// Writes a PyTorch Distributed Checkpoint folder from one process (rank 0): data files first, <c>.metadata</c> last
/// (through <c>.metadata.tmp</c>, flushed to disk, renamed), all inside a staging folder that replaces the previous
/// checkpoint only once complete. A failure or crash at any point leaves the previous checkpoint loadable.
/// </summary>
public static class DcpWriter
{
    /// <summary>
    /// Saves <paramref name="state"/> (flattened keys → <see cref="torch.Tensor"/>, <see cref="DeferredTensor"/> or plain
    /// values: null, bool, integers, doubles, strings, lists, string-keyed dicts) to <paramref name="directory"/>, each
    /// tensor as one full chunk.
    /// </summary>
    public static DcpMetadata Save(string directory, IEnumerable<KeyValuePair<string, object?>> state, DcpWriteOptions? options = null)
    {
        options ??= new DcpWriteOptions();
        if (options.FilesPerRank < 1) throw new ArgumentOutOfRangeException(nameof(options), "FilesPerRank must be at least 1.");
        var target = Path.GetFullPath(directory).TrimEnd(Path.DirectorySeparatorChar);
        var items = state as IReadOnlyCollection<KeyValuePair<string, object?>> ?? new List<KeyValuePair<string, object?>>(state);
        using var staging = SaveStaging.Begin(target, Guid.NewGuid().ToString("N")[..8], rank: 0, items.Select(kv => kv.Value), removeStale: true);
        try
        {
            var metadata = WriteInto(staging.Path, target, items, options);
            options.OnStage?.Invoke("commit");
            var old = FolderSwap.Replace(staging.Path, target);
            if (old is not null) Directory.Delete(old, recursive: true);
            return metadata;
        }
        catch
        {
            if (Directory.Exists(staging.Path)) Directory.Delete(staging.Path, recursive: true);
            throw;
        }
    }

    private static DcpMetadata WriteInto(string folder, string target, IEnumerable<KeyValuePair<string, object?>> state, DcpWriteOptions options)
    {
        var metadata = new DcpMetadata
        {
            Naming = options.Naming,
            CheckpointId = target,
            SaveId = Guid.NewGuid().ToString(),
            Version = "1.0.0",
            PlannerData = new Dictionary<string, object?[]>(),
        };
        var values = new List<KeyValuePair<string, object?>>();
        var tensors = new List<KeyValuePair<string, object>>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (key, value) in state)
        {
            if (!seen.Add(key)) throw new ArgumentException($"key '{key}' appears twice", nameof(state));
            if (value is torch.Tensor or DeferredTensor) tensors.Add(new(key, value));
            else values.Add(new(key, value));
        }

        // Items are dealt round-robin over the files; within each file non-tensor values come first, as PyTorch writes them.
        var files = new List<(string Name, FileStream Stream)>();
        try
        {
            for (int n = 0; n < options.FilesPerRank; n++)
            {
                var name = $"__0_{n}.distcp";
                files.Add((name, new FileStream(Path.Combine(folder, name), FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20)));
            }
            int next = 0;
            foreach (var (key, value) in values)
            {
                var (name, stream) = files[next++ % files.Count];
                long start = stream.Position;
                TorchSaveCodec.WriteValue(stream, value, new ItemSeal(metadata.SaveId!, key, null, ItemSeal.DefaultBlockSize, []));
                metadata.Entries.Add(new DcpBytesEntry(key));
                metadata.Storage[(key, null)] = new DcpStorageLocation(name, start, stream.Position - start, Array.Empty<string>());
                metadata.PlannerData[key] = new object?[] { key };
            }
            foreach (var (key, value) in tensors)
            {
                var (name, stream) = files[next++ % files.Count];
                long start = stream.Position;
                var tensor = value as torch.Tensor ?? ((DeferredTensor)value).Make();
                var shape = tensor.shape;
                var dtype = tensor.dtype;
                try
                {
                    TorchSaveCodec.WriteTensor(stream, tensor, new ItemSeal(metadata.SaveId!, key, new long[shape.Length], ItemSeal.DefaultBlockSize, []), options.ForceZip64);
                }
                finally
                {
                    if (value is DeferredTensor) tensor.Dispose();
                }
                var chunk = new DcpChunk(new long[shape.Length], shape);
                metadata.Entries.Add(new DcpTensorEntry(key, TorchDTypes.NameOf(dtype), shape, new[] { chunk }));
                metadata.Storage[(key, chunk.OffsetsKey)] = new DcpStorageLocation(name, start, stream.Position - start, Array.Empty<string>());
                metadata.PlannerData[key] = new object?[] { key };
            }
            options.OnStage?.Invoke("data");
            foreach (var (_, stream) in files) stream.Flush(flushToDisk: true);
        }
        finally
        {
            foreach (var (_, stream) in files) stream.Dispose();
        }

        var bytes = DcpMetadataWriter.Write(metadata);
        var temp = Path.Combine(folder, ".metadata.tmp");
        using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write))
        {
            stream.Write(bytes);
            options.OnStage?.Invoke("metadata");
            stream.Flush(flushToDisk: true);
        }
        File.Move(temp, Path.Combine(folder, ".metadata"));
        return metadata;
    }
}

using System;
using System.Collections.Generic;
using System.IO;

namespace EmaGen.Dcp;

/// <summary>
/// The write loop of every save: one rank's items into its data files <c>__{rank}_{n}.distcp</c> in the staging
/// folder, dealt round-robin over the files (plain values first, as PyTorch writes them), then flushed to disk. Returns
/// where each item went, for the commit.
/// </summary>
internal static class DcpRankWriter
{
    public static List<ManifestEntry> Write(string folder, string saveId, int rank, IReadOnlyList<SaveValue> values,
        IReadOnlyList<SaveChunk> chunks, DcpWriteOptions options)
    {
        var entries = new List<ManifestEntry>(values.Count + chunks.Count);
        var files = new List<(string Name, Stream Stream)>();
        try
        {
            for (int n = 0; n < options.FilesPerRank; n++)
            {
                var name = $"__{rank}_{n}.distcp";
                files.Add((name, CheckpointFiles.Create(Path.Combine(folder, name))));
            }
            int next = 0;
            foreach (var value in values)
            {
                var (name, stream) = files[next++ % files.Count];
                long start = stream.Position;
                TorchSaveWriter.WriteValue(stream, value.Value, new ItemSeal(saveId, value.Key, null, ItemSeal.DefaultBlockSize, []));
                entries.Add(new ManifestEntry(value.Key, null, null, null, null, name, start, stream.Position - start));
            }
            foreach (var chunk in chunks)
            {
                var (name, stream) = files[next++ % files.Count];
                long start = stream.Position;
                using (var bytes = chunk.Bytes.Open())
                {
                    var seal = new ItemSeal(saveId, chunk.Key, chunk.Offsets, ItemSeal.DefaultBlockSize, []);
                    TorchSaveWriter.WriteTensor(stream, chunk.DType, chunk.Sizes, bytes, seal, options.ForceZip64);
                }
                entries.Add(new ManifestEntry(chunk.Key, chunk.DType.Name, chunk.GlobalSize, chunk.Offsets, chunk.Sizes, name, start, stream.Position - start));
            }
            foreach (var (_, stream) in files) CheckpointFiles.Sync(stream);
        }
        catch
        {
            foreach (var (_, stream) in files) CheckpointFiles.DisposeQuietly(stream);
            throw;
        }
        // Closing after the fsync writes nothing more; still, every file is closed before an error is reported.
        Exception? closing = null;
        foreach (var (_, stream) in files)
        {
            try
            {
                stream.Dispose();
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                closing ??= e;
            }
        }
        if (closing is not null) throw closing;
        return entries;
    }
}

using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text.Json;
using EmaGen.Dcp;

namespace EmaGen.Export;

/// <summary>What <see cref="SafetensorsExport"/> publishes and how.</summary>
/// <param name="Profile">The profile of a multi-profile EmaGen checkpoint (or the key prefix <c>{profile}.</c> of a snapshot); null: the only one.</param>
/// <param name="DType">Floating-point tensors are cast to this (<c>bfloat16</c>, <c>float16</c>, <c>float32</c>); null keeps each tensor's dtype.</param>
/// <param name="StripPrefix">Removed from the start of every name that has it (trainer prefixes such as <c>module.</c>).</param>
/// <param name="AddPrefix">Put before every name, after stripping.</param>
/// <param name="MaxShardBytes">Largest shard; 0 writes one file.</param>
/// <param name="Prefix">The key prefix of an EmaGen checkpoint's EMA (<c>ema.</c>).</param>
internal sealed record ExportOptions(string? Profile = null, CheckpointDType? DType = null, string? StripPrefix = null, string? AddPrefix = null,
    long MaxShardBytes = 0, string Prefix = EmaCheckpoint.DefaultPrefix);

/// <summary>What an export wrote: the files (shards, then the index when sharded), the tensor count and their bytes.</summary>
internal sealed record ExportResult(IReadOnlyList<string> Files, int Tensors, long TotalBytes);

/// <summary>
/// Publishes EMA weights as Hugging Face style safetensors (<c>model.safetensors</c>, or
/// <c>model-0000k-of-0000n.safetensors</c> + <c>model.safetensors.index.json</c>) from an EmaGen DCP checkpoint (dense
/// or sharded, any profile), a PyTorch DCP folder or a safetensors file. Streamed: one source tensor and its cast are
/// resident at a time. Atomic: every file is written under a temporary name and renamed only once all are complete,
/// the index last, so a failed export leaves nothing under the final names.
/// </summary>
internal static class SafetensorsExport
{
    public const string SingleFile = "model.safetensors";
    public const string IndexFile = "model.safetensors.index.json";

    /// <summary>One tensor to publish: its final name, dtype and shape, and how to read it in that dtype.</summary>
    private sealed record Planned(string Name, CheckpointDType DType, long[] Shape, Func<HostTensor> Read)
    {
        public long Bytes => checked(Shapes.Numel(Shape) * DType.Size);
    }

    /// <param name="source">An EmaGen or PyTorch DCP folder, or a <c>.safetensors</c> file.</param>
    /// <param name="outputDir">Where the files go (created).</param>
    /// <param name="options">Profile, cast, renaming and shard size.</param>
    /// <param name="progress">Called after each tensor is written: tensors done, total, bytes done, total bytes.</param>
    public static ExportResult Run(string source, string outputDir, ExportOptions options, Action<int, int, long, long>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.MaxShardBytes < 0) throw new ArgumentOutOfRangeException(nameof(options), "the shard size must not be negative");
        if (options.DType is { } d && !d.IsFloatingPoint) throw new ArgumentException($"--dtype {d.TorchName} is not floating point");
        var tensors = Plan(source, options);
        if (tensors.Count == 0) throw new ArgumentException($"{source}: no tensor to export{(options.Profile is null ? "" : $" for profile '{options.Profile}'")}.");
        var shards = Shard(tensors, options.MaxShardBytes);
        Directory.CreateDirectory(outputDir);
        var names = shards.Count == 1
            ? [SingleFile]
            : Enumerable.Range(1, shards.Count).Select(i => $"model-{i:D5}-of-{shards.Count:D5}.safetensors").ToList();
        long total = tensors.Sum(t => t.Bytes);
        var id = Guid.NewGuid().ToString("N")[..8];
        var staged = new List<(string Temp, string Final)>();
        try
        {
            int done = 0;
            long bytesDone = 0;
            var metadata = new Dictionary<string, string> { ["format"] = "pt" };
            for (int s = 0; s < shards.Count; s++)
            {
                var final = Path.Combine(outputDir, names[s]);
                var temp = Path.Combine(outputDir, $".{names[s]}.export-{id}");
                staged.Add((temp, final));
                var items = shards[s].Select(t => new SafetensorsFile.Item(t.Name, t.DType, t.Shape, new PlainSave.Made(t.Read))).ToList();
                SafetensorsFile.Write(temp, items, metadata, item =>
                {
                    done++;
                    bytesDone += Shapes.Numel(item.Shape) * item.DType.Size;
                    progress?.Invoke(done, tensors.Count, bytesDone, total);
                });
            }
            if (shards.Count > 1)
            {
                var temp = Path.Combine(outputDir, $".{IndexFile}.export-{id}");
                staged.Add((temp, Path.Combine(outputDir, IndexFile)));
                WriteIndex(temp, total, shards, names);
            }
            // Shards first, the index last: a reader that finds the index finds every shard it names.
            foreach (var (temp, final) in staged) CheckpointFiles.MoveFile(temp, final, overwrite: true);
            staged.Clear();
            var files = names.Select(n => Path.Combine(outputDir, n)).ToList();
            if (shards.Count > 1) files.Add(Path.Combine(outputDir, IndexFile));
            return new ExportResult(files, tensors.Count, total);
        }
        finally
        {
            foreach (var (temp, _) in staged) CheckpointFiles.TryDeleteFile(temp);
        }
    }

    private static void WriteIndex(string path, long total, List<List<Planned>> shards, List<string> names)
    {
        using var file = CheckpointFiles.Create(path);
        using (var json = new Utf8JsonWriter(file, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartObject();
            json.WriteStartObject("metadata");
            json.WriteNumber("total_size", total);
            json.WriteEndObject();
            json.WriteStartObject("weight_map");
            foreach (var (t, file1) in shards.SelectMany((shard, s) => shard.Select(t => (t, names[s]))).OrderBy(p => p.t.Name, StringComparer.Ordinal))
            {
                json.WriteString(t.Name, file1);
            }
            json.WriteEndObject();
            json.WriteEndObject();
        }
        CheckpointFiles.Sync(file);
    }

    // Greedy in order, as Hugging Face shards: a new shard once the next tensor would overflow a non-empty one.
    private static List<List<Planned>> Shard(List<Planned> tensors, long maxBytes)
    {
        var shards = new List<List<Planned>> { new() };
        long size = 0;
        foreach (var t in tensors)
        {
            if (maxBytes > 0 && shards[^1].Count > 0 && size + t.Bytes > maxBytes)
            {
                shards.Add(new());
                size = 0;
            }
            shards[^1].Add(t);
            size += t.Bytes;
        }
        return shards;
    }

    // The tensors to publish with their final names, from whichever source.
    private static List<Planned> Plan(string source, ExportOptions options)
    {
        var found = new List<(string Name, CheckpointDType DType, long[] Shape, Func<HostTensor> Read)>();
        if (Directory.Exists(source))
        {
            var reader = DcpFolder.Open(source);
            foreach (var (name, entry) in Select(reader, source, options))
            {
                var dtype = CheckpointDTypes.Readable(entry.DType, $"{source}: key '{entry.Key}'");
                found.Add((name, dtype, entry.Size, () => reader.ReadTensor(entry.Key)));
            }
        }
        else if (File.Exists(source) && source.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
        {
            var (entries, _, dataStart) = SafetensorsFile.ReadHeader(source);
            foreach (var entry in entries)
            {
                var name = options.Profile is null ? entry.Name
                    : entry.Name.StartsWith(options.Profile + ".", StringComparison.Ordinal) ? entry.Name[(options.Profile.Length + 1)..] : null;
                if (name is not null) found.Add((name, entry.DType, entry.Shape, () => SafetensorsFile.ReadTensor(source, entry, dataStart)));
            }
        }
        else
        {
            throw new ArgumentException(File.Exists(source) ? $"'{source}' is neither a DCP folder nor a .safetensors file" : $"'{source}' does not exist");
        }

        var planned = new List<Planned>();
        var seen = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (name, dtype, shape, read) in found)
        {
            var final = name;
            if (options.StripPrefix is { Length: > 0 } strip && final.StartsWith(strip, StringComparison.Ordinal)) final = final[strip.Length..];
            final = (options.AddPrefix ?? "") + final;
            if (final.Length == 0) throw new ArgumentException($"'{name}' has no name left after --strip-prefix '{options.StripPrefix}'.");
            if (!seen.TryAdd(final, name)) throw new ArgumentException($"'{seen[final]}' and '{name}' are both named '{final}' after renaming.");
            var target = options.DType is { } cast && dtype.IsFloatingPoint ? cast : dtype;
            if (target.SafetensorsCode is null) throw new ArgumentException($"'{name}': safetensors has no dtype for {dtype.TorchName}.");
            planned.Add(new Planned(final, target, shape, target == dtype ? read : () => Cast(read(), target)));
        }
        return planned;
    }

    // An EmaGen checkpoint gives the chosen profile's shadows under its prefix (names without it); a plain DCP folder
    // gives every tensor, or with a profile the tensors under "{profile}." (post-hoc snapshots).
    private static List<(string Name, DcpTensorEntry Entry)> Select(DcpFolder reader, string source, ExportOptions options)
    {
        var prefix = options.Prefix;
        var profiles = EmaCheckpoint.ReadProfileNames(reader, source, prefix);
        if (profiles is not null)
        {
            var profile = options.Profile ?? (profiles.Count == 1 ? profiles[0]
                : throw new ArgumentException($"{source} holds the profiles {string.Join(", ", profiles)}; choose one with --profile."));
            if (!profiles.Contains(profile)) throw new ArgumentException($"{source} has no profile '{profile}' (profiles: {string.Join(", ", profiles)}).");
            return EmaCheckpoint.TensorEntries(reader, prefix + profile + ".");
        }
        if (reader.Metadata.Find(CheckpointKeys.Of(prefix, CheckpointKeys.Format)) is not null)
        {
            if (options.Profile is not null) throw new ArgumentException($"{source} is a single-profile EMA checkpoint; it has no profile '{options.Profile}'.");
            return EmaCheckpoint.TensorEntries(reader, prefix);
        }
        var all = reader.Entries.OfType<DcpTensorEntry>().Select(e => (e.Key, e));
        if (options.Profile is { } p) all = all.Where(e => e.Key.StartsWith(p + ".", StringComparison.Ordinal)).Select(e => (e.Key[(p.Length + 1)..], e.e));
        return all.ToList();
    }

    private static unsafe HostTensor Cast(HostTensor source, CheckpointDType dtype)
    {
        using (source)
        {
            var cast = HostTensor.Allocate(dtype, source.Shape);
            HostCasts.Convert(source.Data, source.DType, cast.Data, dtype, source.Numel);
            return cast;
        }
    }
}

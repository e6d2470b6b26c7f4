using System;
using System.Collections.Generic;
using System.IO;
using System.Text.Json;
using EmaGen.Dcp;

namespace EmaGen.Cli;

/// <summary><c>emagen convert SRC DST</c>: DCP folder ↔ .safetensors file; the direction follows from SRC.</summary>
internal static class ConvertCommand
{
    public static int Run(string source, string destination, TextWriter stdout)
    {
        if (Directory.Exists(source)) return ToSafetensors(source, destination, stdout);
        if (File.Exists(source) && source.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase)) return ToDcp(source, destination, stdout);
        throw new ArgumentException(File.Exists(source)
            ? $"'{source}' is neither a DCP folder nor a .safetensors file"
            : $"'{source}' does not exist");
    }

    // One tensor at a time: each is read from the folder when the file reaches it and freed once written.
    private static int ToSafetensors(string folder, string file, TextWriter stdout)
    {
        var reader = DcpFolder.Open(folder);
        var tensors = new List<SafetensorsFile.Item>();
        var metadata = new Dictionary<string, string> { ["format"] = "pt" };
        var skipped = new List<string>();
        foreach (var entry in reader.Entries)
        {
            if (entry is DcpTensorEntry t)
            {
                var dtype = CheckpointDTypes.Readable(t.DType, $"{folder}: key '{t.Key}'");
                tensors.Add(new(t.Key, dtype, t.Size, new PlainSave.Made(() => reader.ReadTensor(t.Key))));
                continue;
            }
            var value = reader.ReadValue(entry.Key);
            (value as IDisposable)?.Dispose();
            if (ValueText.IsJsonRepresentable(value))
            {
                var buffer = new MemoryStream();
                using (var w = new Utf8JsonWriter(buffer)) ValueText.Json(w, value);
                metadata[entry.Key] = System.Text.Encoding.UTF8.GetString(buffer.ToArray());
            }
            else
            {
                skipped.Add(entry.Key);
            }
        }
        long bytes = SafetensorsFile.Write(file, tensors, metadata);
        stdout.WriteLine($"wrote {file}: {tensors.Count} tensors, {metadata.Count - 1} values in __metadata__, {bytes:N0} bytes");
        foreach (var key in skipped) stdout.WriteLine($"skipped '{key}': its value cannot be represented as JSON");
        return 0;
    }

    private static int ToDcp(string file, string folder, TextWriter stdout)
    {
        var (entries, metadata, dataStart) = SafetensorsFile.ReadHeader(file);
        var values = new List<KeyValuePair<string, object?>>();
        foreach (var (key, text) in metadata)
        {
            if (key == "format") continue;
            values.Add(new(key, FromJson(text)));
        }
        var chunks = new List<SaveChunk>();
        foreach (var entry in entries)
        {
            if (entry.DType.StorageClass is null) throw new CheckpointFormatException($"{file}: tensor '{entry.Name}' has dtype {entry.DType.TorchName}, which a DCP item cannot hold.");
            chunks.Add(PlainSave.Whole(entry.Name, entry.DType, entry.Shape, () => SafetensorsFile.ReadTensor(file, entry, dataStart)));
        }
        PlainSave.OneRank(folder, values, chunks);
        stdout.WriteLine($"wrote {folder}: {entries.Count} tensors, {values.Count} values");
        return 0;
    }

    // Metadata values that parse as JSON come back as values; anything else stays a string.
    private static object? FromJson(string text)
    {
        try
        {
            using var doc = JsonDocument.Parse(text, new JsonDocumentOptions { MaxDepth = 32 });
            return Convert(doc.RootElement);
        }
        catch (JsonException)
        {
            return text;
        }
    }

    private static object? Convert(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Null => null,
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        JsonValueKind.String => e.GetString(),
        JsonValueKind.Number => e.TryGetInt64(out var l) ? (object)l : e.GetDouble(),
        JsonValueKind.Array => ConvertArray(e),
        _ => ConvertObject(e),
    };

    private static List<object?> ConvertArray(JsonElement e)
    {
        var list = new List<object?>();
        foreach (var item in e.EnumerateArray()) list.Add(Convert(item));
        return list;
    }

    private static Dictionary<string, object?> ConvertObject(JsonElement e)
    {
        var dict = new Dictionary<string, object?>();
        foreach (var p in e.EnumerateObject()) dict[p.Name] = Convert(p.Value);
        return dict;
    }
}

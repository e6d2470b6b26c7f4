using System;
using System.Collections.Generic;
using System.IO;
using System.Text.Json;
using EmaGen.Dcp;
using TorchSharp;

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

    private static int ToSafetensors(string folder, string file, TextWriter stdout)
    {
        var reader = DcpReader.Open(folder);
        var tensors = new List<KeyValuePair<string, torch.Tensor>>();
        var metadata = new Dictionary<string, string> { ["format"] = "pt" };
        var skipped = new List<string>();
        try
        {
            foreach (var entry in reader.Entries)
            {
                if (entry is DcpTensorEntry)
                {
                    tensors.Add(new(entry.Key, reader.ReadTensor(entry.Key)));
                    continue;
                }
                var value = reader.ReadValue(entry.Key);
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
        finally
        {
            foreach (var (_, t) in tensors) t.Dispose();
        }
    }

    private static int ToDcp(string file, string folder, TextWriter stdout)
    {
        var (entries, metadata, dataStart) = SafetensorsFile.ReadHeader(file);
        var state = new List<KeyValuePair<string, object?>>();
        try
        {
            foreach (var (key, text) in metadata)
            {
                if (key == "format") continue;
                state.Add(new(key, FromJson(text)));
            }
            foreach (var entry in entries) state.Add(new(entry.Name, SafetensorsFile.ReadTensor(file, entry, dataStart)));
            DcpWriter.Save(folder, state);
            stdout.WriteLine($"wrote {folder}: {entries.Count} tensors, {state.Count - entries.Count} values");
            return 0;
        }
        finally
        {
            foreach (var (_, v) in state) (v as torch.Tensor)?.Dispose();
        }
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

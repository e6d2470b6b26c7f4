using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using System.Text.Json;
using EmaGen.Dcp;
using EmaGen.Dcp.Pickle;

namespace EmaGen.Cli;

/// <summary>Renders decoded checkpoint values as text or JSON, with bounded depth (values come from untrusted files).</summary>
internal static class ValueText
{
    private const int MaxDepth = 32;

    public static string Text(object? value, int depth = 0) => depth > MaxDepth ? "..." : value switch
    {
        null => "None",
        bool b => b ? "True" : "False",
        double d => d.ToString("R", CultureInfo.InvariantCulture),
        string s => "'" + s + "'",
        RawPickleValue raw => $"<pickled object, {raw.Pickle.Length} bytes, not decoded>",
        PickleTuple t => "(" + string.Join(", ", t.Items.Select(i => Text(i, depth + 1))) + (t.Count == 1 ? ",)" : ")"),
        List<object?> l => "[" + string.Join(", ", l.Select(i => Text(i, depth + 1))) + "]",
        PickleDict d => "{" + string.Join(", ", d.Items.Select(kv => Text(kv.Key, depth + 1) + ": " + Text(kv.Value, depth + 1))) + "}",
        _ => Convert.ToString(value, CultureInfo.InvariantCulture) ?? "",
    };

    public static void Json(Utf8JsonWriter w, object? value, int depth = 0)
    {
        if (depth > MaxDepth)
        {
            w.WriteStringValue("...");
            return;
        }
        switch (value)
        {
            case null: w.WriteNullValue(); break;
            case bool b: w.WriteBooleanValue(b); break;
            case long l: w.WriteNumberValue(l); break;
            case double d when double.IsFinite(d): w.WriteNumberValue(d); break;
            case double d: w.WriteStringValue(d.ToString(CultureInfo.InvariantCulture)); break;
            case string s: w.WriteStringValue(s); break;
            case RawPickleValue raw:
                w.WriteStartObject();
                w.WriteNumber("raw_pickle_bytes", raw.Pickle.Length);
                w.WriteEndObject();
                break;
            case PickleTuple t:
                w.WriteStartArray();
                foreach (var i in t.Items) Json(w, i, depth + 1);
                w.WriteEndArray();
                break;
            case List<object?> list:
                w.WriteStartArray();
                foreach (var i in list) Json(w, i, depth + 1);
                w.WriteEndArray();
                break;
            case PickleDict dict:
                w.WriteStartObject();
                foreach (var (k, v) in dict.Items)
                {
                    w.WritePropertyName(k as string ?? Text(k, depth + 1));
                    Json(w, v, depth + 1);
                }
                w.WriteEndObject();
                break;
            default: w.WriteStringValue(Text(value, depth)); break;
        }
    }

    /// <summary>Whether <see cref="Json"/> reproduces the value when parsed back (for safetensors metadata).</summary>
    public static bool IsJsonRepresentable(object? value, int depth = 0) => depth <= MaxDepth && value switch
    {
        null or bool or long or string => true,
        double d => double.IsFinite(d),
        List<object?> l => l.All(i => IsJsonRepresentable(i, depth + 1)),
        PickleDict d => d.Items.All(kv => kv.Key is string && IsJsonRepresentable(kv.Value, depth + 1)),
        _ => false,
    };

    public static string Family(DcpMetadata m) => m.Naming switch
    {
        DcpNaming.PyTorch113 => "torch.distributed._shard.checkpoint names (PyTorch 1.13)",
        DcpNaming.PyTorch20 => "torch.distributed.checkpoint names with _shard TensorProperties (PyTorch 2.0-2.2 compatible)",
        _ => "torch.distributed.checkpoint names (PyTorch 2.3+" + (m.SaveId is not null ? "; storage_meta: 2.4+" : "") + (m.Version is not null ? $"; version {m.Version}" : "") + ")",
    };
}

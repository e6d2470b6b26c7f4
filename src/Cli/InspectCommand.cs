using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text.Json;
using EmaGen.Dcp;

namespace EmaGen.Cli;

/// <summary><c>emagen inspect DIR [--json]</c>.</summary>
internal static class InspectCommand
{
    public static int Run(string directory, bool json, TextWriter stdout)
    {
        var reader = DcpFolder.Open(directory);
        var m = reader.Metadata;
        long tensorBytes = 0, elements = 0;
        var files = m.Storage.Values.Select(l => l.RelativePath).Distinct().Order(StringComparer.Ordinal).ToList();
        var values = new Dictionary<string, object?>();
        foreach (var entry in m.Entries)
        {
            if (entry is DcpTensorEntry t)
            {
                // Bytes are counted for the dtypes EmaGen reads (float8 and the like count none).
                int size = CheckpointDTypes.TryGetByTorchName(t.DType, out var row) && row.StorageClass is not null ? row.Size : 0;
                elements += t.Numel;
                tensorBytes += t.Numel * size;
            }
            else
            {
                values[entry.Key] = reader.ReadValue(entry.Key);
            }
        }

        if (json)
        {
            using var w = new Utf8JsonWriter(new StreamAdapter(stdout), new JsonWriterOptions { Indented = true });
            w.WriteStartObject();
            w.WriteString("folder", directory);
            w.WriteString("family", ValueText.Family(m));
            w.WriteString("version", m.Version);
            w.WriteString("save_id", m.SaveId);
            w.WriteStartArray("keys");
            foreach (var entry in m.Entries)
            {
                w.WriteStartObject();
                w.WriteString("key", entry.Key);
                if (entry is DcpTensorEntry t)
                {
                    w.WriteString("dtype", t.DType);
                    WriteLongs(w, "shape", t.Size);
                    w.WriteStartArray("chunks");
                    foreach (var c in t.Chunks)
                    {
                        var l = m.LocationOf(t.Key, c);
                        w.WriteStartObject();
                        WriteLongs(w, "offsets", c.Offsets);
                        WriteLongs(w, "sizes", c.Sizes);
                        w.WriteString("file", l.RelativePath);
                        w.WriteNumber("offset", l.Offset);
                        w.WriteNumber("length", l.Length);
                        w.WriteEndObject();
                    }
                    w.WriteEndArray();
                }
                else
                {
                    var l = m.LocationOf(entry.Key, null);
                    w.WritePropertyName("value");
                    ValueText.Json(w, values[entry.Key]);
                    w.WriteString("file", l.RelativePath);
                    w.WriteNumber("offset", l.Offset);
                    w.WriteNumber("length", l.Length);
                }
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteStartObject("totals");
            w.WriteNumber("keys", m.Entries.Count);
            w.WriteNumber("tensors", m.Entries.Count(e => e is DcpTensorEntry));
            w.WriteNumber("values", values.Count);
            w.WriteNumber("elements", elements);
            w.WriteNumber("tensor_bytes", tensorBytes);
            w.WriteNumber("files", files.Count);
            w.WriteEndObject();
            w.WriteEndObject();
            w.Flush();
            stdout.WriteLine();
            return 0;
        }

        stdout.WriteLine($"{directory}: {ValueText.Family(m)}");
        foreach (var entry in m.Entries)
        {
            if (entry is DcpTensorEntry t)
            {
                stdout.WriteLine($"  {t.Key}  {t.DType} ({string.Join(", ", t.Size)})  {t.Chunks.Count} chunk(s)");
                foreach (var c in t.Chunks)
                {
                    var l = m.LocationOf(t.Key, c);
                    stdout.WriteLine($"      offsets ({string.Join(", ", c.Offsets)}) sizes ({string.Join(", ", c.Sizes)})  {l.RelativePath} bytes {l.Offset}..{l.Offset + l.Length}");
                }
            }
            else
            {
                var l = m.LocationOf(entry.Key, null);
                stdout.WriteLine($"  {entry.Key}  = {ValueText.Text(values[entry.Key])}  ({l.RelativePath} bytes {l.Offset}..{l.Offset + l.Length})");
            }
        }
        stdout.WriteLine($"totals: {m.Entries.Count} keys ({m.Entries.Count(e => e is DcpTensorEntry)} tensors, {values.Count} values), {elements:N0} elements, {tensorBytes:N0} tensor bytes, {files.Count} file(s)");
        return 0;
    }

    private static void WriteLongs(Utf8JsonWriter w, string name, long[] values)
    {
        w.WriteStartArray(name);
        foreach (var v in values) w.WriteNumberValue(v);
        w.WriteEndArray();
    }

    /// <summary>Lets Utf8JsonWriter write into a TextWriter.</summary>
    private sealed class StreamAdapter : Stream
    {
        private readonly TextWriter _writer;
        public StreamAdapter(TextWriter writer) => _writer = writer;
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() => _writer.Flush();
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => _writer.Write(System.Text.Encoding.UTF8.GetString(buffer, offset, count));
    }
}

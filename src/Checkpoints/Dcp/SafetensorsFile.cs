using System;
using System.Buffers.Binary;
using System.Collections.Generic;
using System.IO;
using System.Text.Json;

namespace EmaGen.Dcp;

/// <summary>
/// The safetensors format: an 8-byte little-endian header length, a JSON header (<c>{"name": {"dtype": "F32",
/// "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {str: str}}</c>) padded to 8 bytes, then the raw
/// little-endian tensor bytes. Reading checks every offset, size and dtype against the file.
/// </summary>
internal static class SafetensorsFile
{
    private const long MaxHeaderBytes = 100 << 20;

    /// <summary>A tensor of a safetensors file: where its bytes are.</summary>
    public sealed record Entry(string Name, CheckpointDType DType, long[] Shape, long Begin, long End);

    /// <summary>A tensor to write: its bytes (C order, little-endian) are opened only while they are written.</summary>
    public sealed record Item(string Name, CheckpointDType DType, long[] Shape, IChunkBytes Bytes);

    /// <summary>
    /// Writes tensors and string metadata, one tensor's bytes open at a time; returns the file length. Written beside
    /// the target and renamed over it once flushed: a failed write leaves any previous file intact and no partial one.
    /// </summary>
    public static unsafe long Write(string path, IReadOnlyList<Item> tensors, IReadOnlyDictionary<string, string> metadata, Action<Item>? onWritten = null)
    {
        var header = new MemoryStream();
        long offset = 0;
        using (var json = new Utf8JsonWriter(header))
        {
            json.WriteStartObject();
            json.WriteStartObject("__metadata__");
            foreach (var (k, v) in metadata) json.WriteString(k, v);
            json.WriteEndObject();
            foreach (var t in tensors)
            {
                if (t.DType.SafetensorsCode is not { } code) throw new ArgumentException($"'{t.Name}': safetensors has no dtype for {t.DType.TorchName}");
                long bytes = checked(Shapes.Numel(t.Shape) * t.DType.Size);
                json.WriteStartObject(t.Name);
                json.WriteString("dtype", code);
                json.WriteStartArray("shape");
                foreach (var d in t.Shape) json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + bytes);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += bytes;
            }
            json.WriteEndObject();
        }
        while (header.Length % 8 != 0) header.WriteByte((byte)' ');

        // Written beside the target and renamed over it once flushed: a failed write leaves any previous file intact.
        var temp = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, "." + Path.GetFileName(path) + ".tmp-" + Guid.NewGuid().ToString("N")[..8]);
        var file = CheckpointFiles.Create(temp);
        try
        {
            Span<byte> length = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)header.Length);
            file.Write(length);
            file.Write(header.GetBuffer().AsSpan(0, (int)header.Length));
            foreach (var t in tensors)
            {
                long bytes = checked(Shapes.Numel(t.Shape) * t.DType.Size);
                using var host = t.Bytes.Open();
                if (host.Length != bytes) throw new ArgumentException($"'{t.Name}': {host.Length} bytes given, its shape needs {bytes}");
                byte* data = (byte*)host.Pointer;
                for (long done = 0; done < bytes;)
                {
                    int piece = (int)Math.Min(bytes - done, 1 << 30);
                    file.Write(new ReadOnlySpan<byte>(data + done, piece));
                    done += piece;
                }
                onWritten?.Invoke(t);
            }
            CheckpointFiles.Sync(file);
            long written = file.Length;
            file.Dispose();
            CheckpointFiles.MoveFile(temp, path, overwrite: true);
            return written;
        }
        catch
        {
            CheckpointFiles.DisposeQuietly(file);
            CheckpointFiles.TryDeleteFile(temp);
            throw;
        }
    }

    /// <summary>Reads the header of a safetensors file: its tensors and its string metadata.</summary>
    public static (List<Entry> Tensors, Dictionary<string, string> Metadata, long DataStart) ReadHeader(string path)
    {
        using var file = CheckpointFiles.OpenRead(path);
        Span<byte> lengthBytes = stackalloc byte[8];
        if (file.Length < 8) throw new CheckpointFormatException($"{path}: too short for a safetensors file.");
        file.ReadExactly(lengthBytes);
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(lengthBytes);
        if (headerLength > (ulong)Math.Min(MaxHeaderBytes, file.Length - 8))
        {
            throw new CheckpointFormatException($"{path}: header of {headerLength} bytes does not fit the {file.Length}-byte file.");
        }
        var header = new byte[headerLength];
        file.ReadExactly(header);
        long dataStart = 8 + (long)headerLength;
        long dataLength = file.Length - dataStart;
        var tensors = new List<Entry>();
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        try
        {
            using var doc = JsonDocument.Parse(header, new JsonDocumentOptions { MaxDepth = 8 });
            foreach (var property in doc.RootElement.EnumerateObject())
            {
                if (property.Name == "__metadata__")
                {
                    foreach (var m in property.Value.EnumerateObject()) metadata[m.Name] = m.Value.GetString() ?? "";
                    continue;
                }
                var v = property.Value;
                string code = v.GetProperty("dtype").GetString() ?? "";
                var dtype = CheckpointDTypes.TryGetBySafetensorsCode(code, out var row) ? row : null;
                if (dtype is null) throw new CheckpointFormatException($"{path}: tensor '{property.Name}' has dtype '{code}', which TorchSharp does not support.");
                var shape = new List<long>();
                foreach (var d in v.GetProperty("shape").EnumerateArray()) shape.Add(d.GetInt64());
                var offsets = v.GetProperty("data_offsets");
                long begin = offsets[0].GetInt64(), end = offsets[1].GetInt64();
                long numel = 1;
                foreach (var d in shape) numel = d < 0 ? -1 : checked(numel * d);
                if (numel < 0 || begin < 0 || end < begin || end > dataLength || (end - begin) != checked(numel * dtype.Size))
                {
                    throw new CheckpointFormatException($"{path}: tensor '{property.Name}' has bytes [{begin}, {end}) that do not fit its shape or the file.");
                }
                tensors.Add(new Entry(property.Name, dtype, shape.ToArray(), begin, end));
            }
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or KeyNotFoundException or FormatException or OverflowException or IndexOutOfRangeException)
        {
            throw new CheckpointFormatException($"{path}: malformed safetensors header: {e.Message}", e);
        }
        return (tensors, metadata, dataStart);
    }

    /// <summary>Reads one tensor of a safetensors file (caller-owned).</summary>
    public static HostTensor ReadTensor(string path, Entry entry, long dataStart)
    {
        var tensor = HostTensor.Allocate(entry.DType, entry.Shape);
        try
        {
            unsafe { ReadInto(path, entry, dataStart, tensor.Data); }
            return tensor;
        }
        catch
        {
            tensor.Dispose();
            throw;
        }
    }

    /// <summary>Reads the bytes of one tensor of a safetensors file to <paramref name="destination"/>.</summary>
    public static unsafe void ReadInto(string path, Entry entry, long dataStart, byte* destination)
    {
        using var file = CheckpointFiles.OpenRead(path, 1 << 20);
        file.Position = dataStart + entry.Begin;
        long bytes = entry.End - entry.Begin;
        for (long done = 0; done < bytes;)
        {
            int piece = (int)Math.Min(bytes - done, 1 << 30);
            file.ReadExactly(new Span<byte>(destination + done, piece));
            done += piece;
        }
    }
}

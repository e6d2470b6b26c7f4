using System;
using System.Collections.Generic;
using System.IO;
using System.Text.Json;
using EmaGen.Dcp.Zip;

namespace EmaGen.Dcp;

/// <summary>
/// The record <c>.data/emagen_seal</c> that EmaGen adds to every item it writes: the save it belongs to, the key (and
/// chunk offsets) it holds, and a CRC-32 per 1 MiB block of its tensor data. The save id binds each data file to the
/// <c>.metadata</c> of the same save (a file copied in from another save is refused instead of loading as a blend of
/// two states); the key binds each item to its entry (a rewritten offset cannot hand one key another's bytes); the
/// block CRCs let a rank that reads a few rows of a large chunk verify just the blocks it reads. PyTorch ignores the
/// record (its reader looks records up by name); items PyTorch wrote have none and are checked by their whole-record
/// CRC instead.
/// </summary>
internal sealed record ItemSeal(string SaveId, string Key, long[]? Offsets, int BlockSize, uint[] BlockCrcs)
{
    public const string RecordName = ".data/emagen_seal";

    public const int DefaultBlockSize = 1 << 20;

    private const string Format = "emagen.seal/1";

    public byte[] Encode()
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteString("format", Format);
            w.WriteString("save", SaveId);
            w.WriteString("key", Key);
            if (Offsets is not null)
            {
                w.WriteStartArray("offsets");
                foreach (var o in Offsets) w.WriteNumberValue(o);
                w.WriteEndArray();
            }
            w.WriteNumber("block", BlockSize);
            w.WriteStartArray("crc32");
            foreach (var c in BlockCrcs) w.WriteNumberValue(c);
            w.WriteEndArray();
            w.WriteEndObject();
        }
        return buffer.ToArray();
    }

    /// <summary>The seal of an item, or null when it has none (items PyTorch wrote).</summary>
    public static ItemSeal? Read(TorchArchiveReader archive, string source)
    {
        if (!archive.TryGet(RecordName, out var record)) return null;
        var bytes = archive.ReadAll(record);
        try
        {
            using var doc = JsonDocument.Parse(bytes, new JsonDocumentOptions { MaxDepth = 4 });
            var root = doc.RootElement;
            if (root.GetProperty("format").GetString() != Format) throw new FormatException($"format is not {Format}");
            long[]? offsets = null;
            if (root.TryGetProperty("offsets", out var o))
            {
                offsets = new long[o.GetArrayLength()];
                int i = 0;
                foreach (var e in o.EnumerateArray()) offsets[i++] = e.GetInt64();
            }
            int block = root.GetProperty("block").GetInt32();
            if (block < 4096) throw new FormatException($"block size {block} is below 4096");
            var crcs = new uint[root.GetProperty("crc32").GetArrayLength()];
            int n = 0;
            foreach (var e in root.GetProperty("crc32").EnumerateArray()) crcs[n++] = e.GetUInt32();
            return new ItemSeal(root.GetProperty("save").GetString()!, root.GetProperty("key").GetString()!, offsets, block, crcs);
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException or ArgumentException)
        {
            throw new CheckpointFormatException($"{source}: record '{RecordName}' is malformed: {e.Message}", e);
        }
    }

    /// <summary>Checks that this seal belongs to <paramref name="key"/> at <paramref name="offsets"/> (null for a value).</summary>
    public void CheckItem(string key, long[]? offsets, string source)
    {
        bool sameOffsets = offsets is null ? Offsets is null : Offsets is not null && Offsets.AsSpan().SequenceEqual(offsets);
        if (Key != key || !sameOffsets)
        {
            throw new CheckpointFormatException(
                $"{source}: the item holds key '{Key}'{OffsetsText(Offsets)}, but the metadata points '{key}'{OffsetsText(offsets)} at it.");
        }
    }

    private static string OffsetsText(long[]? offsets) => offsets is null ? "" : $" (chunk at {string.Join(",", offsets)})";
}

using System;
using System.Buffers.Binary;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using EmaGen.Dcp;
using EmaGen.Dcp.Pickle;
using EmaGen.Dcp.Zip;

namespace EmaGen.Fuzz;

/// <summary>
/// Deterministic mutations of a checkpoint folder, in families: raw bytes (bit flips, overwrites, truncation, insertion),
/// file operations, ZIP header fields, pickle fields, crafted hostile pickles, and metadata rewrites made through the
/// metadata reader and writer (so they stay well-formed pickles and test the checks behind the parser).
/// </summary>
public static class Mutator
{
    public static readonly string[] Families =
    {
        "bitflip", "overwrite", "truncate", "insert", "file-op", "zip-field", "pickle-field", "hostile-pickle", "metadata-rewrite",
    };

    private static readonly long[] Interesting =
    {
        0, 1, 2, 7, 63, 64, 127, 128, 255, 256, 0x7fff, 0x8000, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xffffffff,
        0x100000000, long.MaxValue, -1, -2, -0x80000000L,
    };

    /// <summary>Applies one mutation of <paramref name="family"/>; returns a short description.</summary>
    public static string Apply(string family, string folder, CorpusEntry entry, Random random) => family switch
    {
        "bitflip" => BitFlip(folder, random),
        "overwrite" => Overwrite(folder, random),
        "truncate" => Truncate(folder, random),
        "insert" => Insert(folder, random),
        "file-op" => FileOperation(folder, entry, random),
        "zip-field" => ZipField(folder, random),
        "pickle-field" => PickleField(folder, random),
        "hostile-pickle" => HostilePickle(folder, entry, random),
        "metadata-rewrite" => MetadataRewrite(folder, entry, random),
        _ => throw new ArgumentException(family),
    };

    private static string PickFile(string folder, Random random, double metadataShare = 0.3)
    {
        var data = Directory.GetFiles(folder, "*.distcp");
        if (data.Length == 0 || random.NextDouble() < metadataShare) return Path.Combine(folder, ".metadata");
        return data[random.Next(data.Length)];
    }

    private static string BitFlip(string folder, Random random)
    {
        var file = PickFile(folder, random);
        var bytes = File.ReadAllBytes(file);
        if (bytes.Length == 0) return "bitflip: empty file";
        int at = random.Next(bytes.Length), bit = random.Next(8);
        bytes[at] ^= (byte)(1 << bit);
        File.WriteAllBytes(file, bytes);
        return $"bitflip {Path.GetFileName(file)}@{at}.{bit}";
    }

    private static string Overwrite(string folder, Random random)
    {
        var file = PickFile(folder, random);
        var bytes = File.ReadAllBytes(file);
        if (bytes.Length == 0) return "overwrite: empty file";
        int at = random.Next(bytes.Length), count = Math.Min(1 + random.Next(8), bytes.Length - at);
        for (int i = 0; i < count; i++) bytes[at + i] = (byte)(random.Next(4) switch { 0 => 0, 1 => 0xff, 2 => 0x7f, _ => random.Next(256) });
        File.WriteAllBytes(file, bytes);
        return $"overwrite {Path.GetFileName(file)}@{at}+{count}";
    }

    private static string Truncate(string folder, Random random)
    {
        var file = PickFile(folder, random);
        var bytes = File.ReadAllBytes(file);
        int length = bytes.Length == 0 ? 0 : random.Next(bytes.Length);
        File.WriteAllBytes(file, bytes[..length]);
        return $"truncate {Path.GetFileName(file)} to {length}";
    }

    private static string Insert(string folder, Random random)
    {
        var file = PickFile(folder, random);
        var bytes = File.ReadAllBytes(file);
        int at = random.Next(bytes.Length + 1);
        var extra = new byte[1 + random.Next(64)];
        random.NextBytes(extra);
        File.WriteAllBytes(file, bytes[..at].Concat(extra).Concat(bytes[at..]).ToArray());
        return $"insert {extra.Length} at {Path.GetFileName(file)}@{at}";
    }

    private static string FileOperation(string folder, CorpusEntry entry, Random random)
    {
        var data = Directory.GetFiles(folder, "*.distcp").Order(StringComparer.Ordinal).ToArray();
        var metadata = Path.Combine(folder, ".metadata");
        if (data.Length == 0) return "file-op: no data file left";
        switch (random.Next(8))
        {
            case 0:
                File.Delete(metadata);
                return "delete .metadata";
            case 1:
                File.Move(metadata, metadata + ".tmp");
                return "rename .metadata to .metadata.tmp";
            case 2:
                {
                    var victim = data[random.Next(data.Length)];
                    File.Delete(victim);
                    return "delete " + Path.GetFileName(victim);
                }
            case 3:
                {
                    var victim = data[random.Next(data.Length)];
                    File.Delete(victim);
                    Directory.CreateDirectory(victim);
                    return "folder instead of " + Path.GetFileName(victim);
                }
            case 4:
                {
                    var victim = data[random.Next(data.Length)];
                    File.WriteAllBytes(victim, Array.Empty<byte>());
                    return "empty " + Path.GetFileName(victim);
                }
            // Only sealed (EmaGen) folders: in an unsealed one the metadata is the sole authority on which file holds what,
            // and two swapped well-formed items are a different valid checkpoint, not a damaged one.
            case 5 when data.Length > 1 && entry.Sealed:
                {
                    var a = data[random.Next(data.Length)];
                    var b = data[(Array.IndexOf(data, a) + 1 + random.Next(data.Length - 1)) % data.Length];
                    File.Move(a, a + ".swap");
                    File.Move(b, a);
                    File.Move(a + ".swap", b);
                    return $"swap {Path.GetFileName(a)} and {Path.GetFileName(b)}";
                }
            case 6 when entry.LaterSave is not null:
                {
                    var later = Directory.GetFiles(entry.LaterSave, "*.distcp").Order(StringComparer.Ordinal).ToArray();
                    var file = later[random.Next(later.Length)];
                    File.Copy(file, Path.Combine(folder, Path.GetFileName(file)), overwrite: true);
                    return "data file from a later save: " + Path.GetFileName(file);
                }
            case 7 when entry.LaterSave is not null:
                File.Copy(Path.Combine(entry.LaterSave, ".metadata"), metadata, overwrite: true);
                return ".metadata from a later save";
            default:
                {
                    var victim = data[random.Next(data.Length)];
                    File.WriteAllBytes(victim, File.ReadAllBytes(victim).Concat(new byte[random.Next(1, 4096)]).ToArray());
                    return "append zeros to " + Path.GetFileName(victim);
                }
        }
    }

    // Field offsets (and widths) inside each ZIP structure PyTorch and EmaGen write.
    private static readonly Dictionary<uint, (int Offset, int Width)[]> ZipFields = new()
    {
        [0x04034b50] = new[] { (4, 2), (6, 2), (8, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2) },                    // local header
        [0x02014b50] = new[] { (8, 2), (10, 2), (16, 4), (20, 4), (24, 4), (28, 2), (30, 2), (32, 2), (42, 4) },         // central directory
        [0x06054b50] = new[] { (8, 2), (10, 2), (12, 4), (16, 4), (20, 2) },                                             // end record
        [0x06064b50] = new[] { (4, 8), (24, 8), (32, 8), (40, 8), (48, 8) },                                             // ZIP64 end record
        [0x07064b50] = new[] { (8, 8), (16, 4) },                                                                         // ZIP64 locator
        [0x08074b50] = new[] { (4, 4), (8, 4), (12, 4) },                                                                 // data descriptor
    };

    private static string ZipField(string folder, Random random)
    {
        var file = PickFile(folder, random, metadataShare: 0);
        var bytes = File.ReadAllBytes(file);
        var hits = new List<(int At, uint Signature)>();
        for (int i = 0; i + 4 <= bytes.Length; i++)
        {
            uint sig = BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(i));
            if (ZipFields.ContainsKey(sig)) hits.Add((i, sig));
        }
        if (hits.Count == 0) return BitFlip(folder, random);
        var (at, signature) = hits[random.Next(hits.Count)];
        var fields = ZipFields[signature];
        var (offset, width) = fields[random.Next(fields.Length)];
        if (at + offset + width > bytes.Length) return "zip-field: structure cut short";
        long value = random.Next(3) == 0 ? ReadField(bytes, at + offset, width) + random.Next(-3, 4) : Interesting[random.Next(Interesting.Length)];
        WriteField(bytes, at + offset, width, value);
        File.WriteAllBytes(file, bytes);
        return $"zip-field {Path.GetFileName(file)} 0x{signature:x8}@{at}+{offset} = {value}";
    }

    private static string PickleField(string folder, Random random)
    {
        var file = PickFile(folder, random, metadataShare: 0.6);
        var bytes = File.ReadAllBytes(file);
        // Opcodes with an argument a mutation can change: K M J (ints), LONG1, SHORT_BINUNICODE, BINUNICODE, BINGET/BINPUT, FRAME.
        var widths = new Dictionary<byte, int> { [(byte)'K'] = 1, [(byte)'M'] = 2, [(byte)'J'] = 4, [0x8a] = 1, [0x8c] = 1, [(byte)'X'] = 4, [(byte)'h'] = 1, [(byte)'q'] = 1, [0x95] = 8 };
        var hits = new List<int>();
        for (int i = 0; i < bytes.Length; i++) if (widths.ContainsKey(bytes[i])) hits.Add(i);
        if (hits.Count == 0) return BitFlip(folder, random);
        int at = hits[random.Next(hits.Count)];
        int width = widths[bytes[at]];
        if (at + 1 + width > bytes.Length) return "pickle-field: cut short";
        long value = random.Next(3) == 0 ? ReadField(bytes, at + 1, width) + random.Next(-2, 3) : Interesting[random.Next(Interesting.Length)];
        WriteField(bytes, at + 1, width, value);
        File.WriteAllBytes(file, bytes);
        return $"pickle-field {Path.GetFileName(file)} op 0x{bytes[at]:x2}@{at} = {value}";
    }

    /// <summary>Hostile pickles: what a malicious checkpoint would carry instead of metadata.</summary>
    public static byte[] Hostile(int kind)
    {
        switch (kind)
        {
            case 0: return new PickleWriter().Global("os", "system").Mark().String("touch /tmp/emagen-pwned").Tuple().Reduce().Finish();
            case 1: return new byte[] { 0x80, 4, (byte)']', 0x94, (byte)'h', 0, (byte)'a', (byte)'.' }; // a list that holds itself
            case 2:
                {
                    var b = new List<byte> { 0x80, 4, (byte)']', 0x94, (byte)'0' };
                    for (int i = 0; i < 60; i++) b.AddRange(new byte[] { (byte)']', (byte)'(', (byte)'h', (byte)i, (byte)'h', (byte)i, (byte)'e', 0x94, (byte)'0' });
                    b.AddRange(new byte[] { (byte)'h', 60, (byte)'.' });
                    return b.ToArray();
                }
            case 3: return new byte[] { 0x80, 4 }.Concat(Enumerable.Repeat((byte)'(', 100_000)).Append((byte)'.').ToArray();
            case 4: return new byte[] { 0x80, 4, 0x8d, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, (byte)'.' };  // BINUNICODE8 of 2^63
            case 5: return new byte[] { 0x80, 4, 0x95, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, (byte)'N', (byte)'.' };    // FRAME lies
            case 6: return new byte[] { 0x80, 2, 0x8b, 0xff, 0xff, 0xff, 0x7f, (byte)'.' };                          // LONG4 of 2 GiB
            case 7: return new byte[] { 0x80, 2, (byte)'j', 0xff, 0xff, 0xff, 0xff, (byte)'.' };                      // memo never stored
            case 8: return new PickleWriter().Global("torch", "float32").EmptyTuple().NewObj().Finish();             // NEWOBJ of a dtype
            case 9: return new byte[] { 0x80, 2, (byte)'N', (byte)'N', (byte)'.' };                                    // STOP with 2 items
            case 10: return new PickleWriter().Global("builtins", "getattr").Mark().Global("torch", "Size").String("__init__").Tuple().Reduce().Finish();
            default:
                {
                    // A dict of 200k keys: linear in a hashed dict, quadratic in a scanned one.
                    var p = new PickleWriter().EmptyDict().Mark();
                    for (int i = 0; i < 200_000; i++) p.Int(i).None();
                    return p.SetItems().Finish();
                }
        }
    }

    public const int HostileKinds = 12;

    private static string HostilePickle(string folder, CorpusEntry entry, Random random)
    {
        int kind = random.Next(HostileKinds);
        if (random.Next(2) == 0)
        {
            File.WriteAllBytes(Path.Combine(folder, ".metadata"), Hostile(kind));
            return $"hostile .metadata #{kind}";
        }
        // Otherwise a new item with the hostile data.pkl, appended to a data file, and one key pointed at it.
        var path = Path.Combine(folder, ".metadata");
        DcpMetadata metadata;
        try
        {
            metadata = DcpMetadataReader.Read(File.ReadAllBytes(path), path);
        }
        catch (CheckpointFormatException)
        {
            return "hostile item: metadata unreadable";
        }
        var data = Directory.GetFiles(folder, "*.distcp").Order(StringComparer.Ordinal).ToArray();
        if (data.Length == 0) return "hostile item: no data file left";
        var file = data[random.Next(data.Length)];
        using var item = new MemoryStream();
        var archive = new TorchArchiveWriter(item);
        archive.AddRecord("data.pkl", Hostile(kind));
        archive.AddText("version", "3\n");
        archive.Finish();
        long offset = new FileInfo(file).Length;
        using (var stream = new FileStream(file, FileMode.Append)) stream.Write(item.ToArray());
        // In an unsealed folder a value key re-pointed at a well-formed pickle is a different valid checkpoint; tensor
        // keys must still refuse a non-tensor item.
        var keys = metadata.Storage.Keys.Where(k => entry.Sealed || k.Offsets is not null).ToList();
        if (keys.Count == 0) return "hostile item: no key to point";
        var key = keys[random.Next(keys.Count)];
        metadata.Storage[key] = new DcpStorageLocation(Path.GetFileName(file), offset, item.Length, Array.Empty<string>());
        File.WriteAllBytes(path, DcpMetadataWriter.Write(metadata));
        return $"hostile item #{kind} for '{key.Key}'";
    }

    private static string MetadataRewrite(string folder, CorpusEntry entry, Random random)
    {
        var path = Path.Combine(folder, ".metadata");
        var metadata = DcpMetadataReader.Read(File.ReadAllBytes(path), path);
        var tensors = metadata.Entries.Select((e, i) => (e, i)).Where(x => x.e is DcpTensorEntry).ToList();
        var storage = metadata.Storage.Keys.ToList();
        if (tensors.Count == 0 || storage.Count == 0) return "metadata: nothing to rewrite";
        string what;
        switch (random.Next(10))
        {
            case 0:
                {
                    var (e, i) = tensors[random.Next(tensors.Count)];
                    var t = (DcpTensorEntry)e;
                    var chunk = t.Chunks[random.Next(t.Chunks.Count)];
                    if (chunk.Offsets.Length == 0) goto default;
                    int d = random.Next(chunk.Offsets.Length);
                    var moved = chunk.WithOffsets(chunk.Offsets.Select((o, k) => k == d ? o + random.Next(-3, 4) : o).ToArray());
                    metadata.Storage[(t.Key, moved.OffsetsKey)] = metadata.Storage[(t.Key, chunk.OffsetsKey)];
                    metadata.Entries[i] = t.With(chunks: t.Chunks.Select(c => ReferenceEquals(c, chunk) ? moved : c).ToArray());
                    what = $"chunk of '{t.Key}' moved to ({moved.OffsetsKey})";
                    break;
                }
            case 1:
                {
                    var (e, i) = tensors[random.Next(tensors.Count)];
                    var t = (DcpTensorEntry)e;
                    if (t.Size.Length == 0) goto default;
                    var size = (long[])t.Size.Clone();
                    size[random.Next(size.Length)] += random.Next(1, 3);
                    metadata.Entries[i] = t.With(size: size);
                    what = $"'{t.Key}' shape ({string.Join(",", size)})";
                    break;
                }
            case 2:
                {
                    var (e, i) = tensors[random.Next(tensors.Count)];
                    var dtype = new[] { "float16", "bfloat16", "float64", "int32", "uint8", "float8_e4m3fn" }[random.Next(6)];
                    metadata.Entries[i] = ((DcpTensorEntry)e).With(dType: dtype);
                    what = $"'{e.Key}' dtype {dtype}";
                    break;
                }
            case 3 when entry.Sealed:
                {
                    // Re-point one key at another's item. Only for sealed (EmaGen) folders: in an unsealed folder the
                    // metadata is the sole authority, and a consistent re-pointing is a different valid checkpoint.
                    var a = storage[random.Next(storage.Count)];
                    var b = storage[random.Next(storage.Count)];
                    (metadata.Storage[a], metadata.Storage[b]) = (metadata.Storage[b], metadata.Storage[a]);
                    what = $"swap items of '{a.Key}' and '{b.Key}'";
                    break;
                }
            case 4:
                {
                    var (e, _) = tensors[random.Next(tensors.Count)];
                    var t = (DcpTensorEntry)e;
                    var location = metadata.LocationOf(t.Key, t.Chunks[0]);
                    for (char c = 'a'; c <= 'z'; c++)
                    {
                        var alias = e.Key + "_alias_" + c;
                        metadata.Entries.Add(t.With(key: alias));
                        foreach (var chunk in t.Chunks) metadata.Storage[(alias, chunk.OffsetsKey)] = location;
                    }
                    what = $"26 aliases of '{t.Key}'";
                    break;
                }
            case 5:
                {
                    int i = random.Next(metadata.Entries.Count);
                    what = $"drop '{metadata.Entries[i].Key}'";
                    metadata.Entries.RemoveAt(i);
                    break;
                }
            case 6:
                {
                    int i = random.Next(metadata.Entries.Count);
                    var old = metadata.Entries[i];
                    var renamed = old.Key.Length > 1 ? old.Key[..^1] + (char)(old.Key[^1] ^ 1) : old.Key + "x";
                    metadata.Entries[i] = old.WithKey(renamed);
                    foreach (var k in storage.Where(k => k.Key == old.Key))
                    {
                        metadata.Storage[(renamed, k.Offsets)] = metadata.Storage[k];
                        metadata.Storage.Remove(k);
                    }
                    what = $"rename '{old.Key}' to '{renamed}'";
                    break;
                }
            case 7:
                {
                    var k = storage[random.Next(storage.Count)];
                    var l = metadata.Storage[k];
                    long delta = Interesting[random.Next(Interesting.Length)] * (random.Next(2) == 0 ? 1 : -1);
                    metadata.Storage[k] = random.Next(2) == 0 ? l with { Offset = l.Offset + delta } : l with { Length = l.Length + delta };
                    what = $"location of '{k.Key}' off by {delta}";
                    break;
                }
            case 8:
                {
                    var k = storage[random.Next(storage.Count)];
                    var name = new[] { "../__0_0.distcp", "/etc/passwd", "__9_9.distcp", "", ".", ".metadata" }[random.Next(6)];
                    metadata.Storage[k] = metadata.Storage[k] with { RelativePath = name };
                    what = $"'{k.Key}' in file '{name}'";
                    break;
                }
            case 9:
                metadata.SaveId = Guid.NewGuid().ToString();
                what = "another save id";
                break;
            default:
                {
                    var k = storage[random.Next(storage.Count)];
                    metadata.Storage.Remove(k);
                    what = $"no storage for '{k.Key}'";
                    break;
                }
        }
        File.WriteAllBytes(path, DcpMetadataWriter.Write(metadata));
        return "metadata: " + what;
    }

    private static long ReadField(byte[] b, int at, int width) => width switch
    {
        1 => b[at],
        2 => BinaryPrimitives.ReadUInt16LittleEndian(b.AsSpan(at)),
        4 => BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(at)),
        _ => BinaryPrimitives.ReadInt64LittleEndian(b.AsSpan(at)),
    };

    private static void WriteField(byte[] b, int at, int width, long value)
    {
        switch (width)
        {
            case 1: b[at] = (byte)value; break;
            case 2: BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(at), (ushort)value); break;
            case 4: BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(at), (uint)value); break;
            default: BinaryPrimitives.WriteInt64LittleEndian(b.AsSpan(at), value); break;
        }
    }
}

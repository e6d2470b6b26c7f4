using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Numerics;
using EmaGen.Dcp;
using EmaGen.Dcp.Pickle;
using EmaGen.Tests.Models;
using EmaGen.Tests.Runtime;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;

namespace EmaGen.Tests.Dcp;

/// <summary>
/// What an independent campaign found in the checkpoint readers and savers, each reproduced and fixed: 8-byte pickle
/// integers, unchecked bytes on the row-range path, overlapping chunks, files mixed from two saves, missing manager
/// values, stray exception types, memory amplification, leaked staging folders, and a full disk.
/// </summary>
public sealed class CheckpointTrustTests
{
    // ---- 1. integers of 8 bytes (offsets and lengths past 2 GiB) ----

    [Theory]
    [InlineData(new byte[] { 0x00, 0x00, 0x00, 0x80, 0x00 }, 2147483648L)]                      // Python's LONG1 for 2^31
    [InlineData(new byte[] { 0x45, 0x23, 0x01, 0x00, 0x01 }, 4295041861L)]                      // 2^32 + 0x12345
    [InlineData(new byte[] { 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40 }, 4611686018427387904L)]
    [InlineData(new byte[] { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f }, long.MaxValue)]
    [InlineData(new byte[] { 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80 }, long.MinValue)]
    [InlineData(new byte[] { 0xfe, 0xff, 0xff, 0x7f, 0xff }, -2147483650L)]
    public void LongIntegersUpTo64BitsDecodeAsLong(byte[] littleEndian, long expected)
    {
        var pickle = new byte[] { 0x80, 2, 0x8a, (byte)littleEndian.Length }.Concat(littleEndian).Append((byte)'.').ToArray();
        Assert.Equal(expected, Assert.IsType<long>(SafePickleReader.Read(pickle, "long1")));

        var long4 = new byte[] { 0x80, 2, 0x8b, (byte)littleEndian.Length, 0, 0, 0 }.Concat(littleEndian).Append((byte)'.').ToArray();
        Assert.Equal(expected, Assert.IsType<long>(SafePickleReader.Read(long4, "long4")));

        Assert.Equal(expected, Assert.IsType<long>(SafePickleReader.Read(new PickleWriter().Int(expected).Finish(), "writer")));
    }

    [Fact]
    public void IntegersBeyond64BitsStayBigIntegersAndAreRejectedAsSizes()
    {
        var pickle = new byte[] { 0x80, 2, 0x8a, 9, 0, 0, 0, 0, 0, 0, 0, 0, 1, (byte)'.' };
        Assert.Equal(BigInteger.One << 64, Assert.IsType<BigInteger>(SafePickleReader.Read(pickle, "big")));
    }

    [Fact]
    public void MetadataWithOffsetsAndLengthsPast4GiBRoundTrips()
    {
        var metadata = new DcpMetadata { SaveId = "s", Version = "1.0.0" };
        var chunk = new DcpChunk(new long[] { 0 }, new long[] { 3L << 30 });
        metadata.Entries.Add(new DcpTensorEntry("big", "float32", new long[] { 3L << 30 }, new[] { chunk }));
        metadata.Storage[("big", chunk.OffsetsKey)] = new DcpStorageLocation("__0_0.distcp", 5L << 30, (12L << 30) + 4096, Array.Empty<string>());
        var back = DcpMetadataReader.Read(DcpMetadataWriter.Write(metadata), "big .metadata");
        var location = back.LocationOf("big", ((DcpTensorEntry)back.Entries[0]).Chunks[0]);
        Assert.Equal((5L << 30, (12L << 30) + 4096), (location.Offset, location.Length));
        Assert.Equal(3L << 30, ((DcpTensorEntry)back.Entries[0]).Size[0]);
    }

    // ---- 2. every byte a read returns is CRC-checked, also on the row-range path ----

    [Fact]
    public void ACorruptedByteOfASealedChunkFailsTheRowsThatReadIt()
    {
        using var folder = TestPaths.NewTempFolder();
        using var w = torch.arange(1024 * 1024, dtype: torch.ScalarType.Float32).reshape(1024, 1024);   // 4 blocks of 1 MiB
        DcpWriter.Save(folder["ckpt"], new[] { new KeyValuePair<string, object?>("w", w) });
        var file = Path.Combine(folder["ckpt"], "__0_0.distcp");
        long dataStart = FindData(folder["ckpt"], "w");
        FlipByte(file, dataStart + 3 * (1 << 20) + 12345);                                          // inside block 3 = rows 768..1023

        var reader = DcpReader.Open(folder["ckpt"]);
        using (var clean = reader.ReadSlice("w", new long[] { 0, 0 }, new long[] { 256, 1024 })) { }   // block 0 is intact
        var e = Assert.Throws<CheckpointFormatException>(() => reader.ReadSlice("w", new long[] { 770, 0 }, new long[] { 4, 1024 }));
        Assert.Contains("block 3", e.Message);
        Assert.Contains("CRC-32", e.Message);
        Assert.Throws<CheckpointFormatException>(() => reader.ReadTensor("w"));
    }

    [Fact]
    public void ACorruptedByteOfAPyTorchShardIsCaughtOnEveryReadPath()
    {
        using var folder = TestPaths.NewTempFolder();
        var copy = CopyFixture("sharded_2rank", folder["pt"]);
        var reader = DcpReader.Open(copy);
        var sharded = reader.Entries.OfType<DcpTensorEntry>().First(t => t.Chunks.Count > 1);
        var chunk = sharded.Chunks[1];
        var location = reader.Metadata.LocationOf(sharded.Key, chunk);
        long dataStart = FindRecordData(Path.Combine(copy, location.RelativePath), location, "data/0");
        FlipByte(Path.Combine(copy, location.RelativePath), dataStart + 1);

        var fresh = DcpReader.Open(copy);
        Assert.Contains("CRC-32", Assert.Throws<CheckpointFormatException>(() => fresh.ReadTensor(sharded.Key)).Message);
        // A box inside the damaged chunk reads through the row-range path (the chunk is not the box): still checked.
        var box = (long[])chunk.Sizes.Clone();
        box[0] = 1;
        Assert.Contains("CRC-32", Assert.Throws<CheckpointFormatException>(() => fresh.ReadSlice(sharded.Key, chunk.Offsets, box)).Message);
    }

    // ---- 3. chunks that overlap (and so hide a hole) are refused ----

    [Fact]
    public void OverlappingChunksAreRefusedEvenWhenTheirVolumeAddsUp()
    {
        using var folder = TestPaths.NewTempFolder();
        var copy = CopyFixture("sharded_2rank", folder["pt"]);
        var metadata = DcpMetadataReader.Read(File.ReadAllBytes(Path.Combine(copy, ".metadata")), "fixture");
        var index = metadata.Entries.FindIndex(e => e is DcpTensorEntry { Chunks.Count: 2 });
        var entry = (DcpTensorEntry)metadata.Entries[index];
        var moved = entry.Chunks[1].WithOffsets(entry.Chunks[1].Offsets.Select((o, d) => d == 0 ? o - 1 : o).ToArray());
        metadata.Storage[(entry.Key, moved.OffsetsKey)] = metadata.Storage[(entry.Key, entry.Chunks[1].OffsetsKey)];
        metadata.Entries[index] = entry.With(chunks: new[] { entry.Chunks[0], moved });
        File.WriteAllBytes(Path.Combine(copy, ".metadata"), DcpMetadataWriter.Write(metadata));

        var e = Assert.Throws<CheckpointFormatException>(() => DcpReader.Open(copy));
        Assert.Contains("overlap", e.Message);
        Assert.Contains(entry.Key, e.Message);
    }

    // ---- 4. data files of another save, and items re-pointed at other keys ----

    [Fact]
    public void ADataFileFromAnotherSaveIsRefused()
    {
        using var folder = TestPaths.NewTempFolder();
        using var model = new BareParameters(reflection: false);
        using var ema = new EmaManager<BareParameters>(model, 0.5);
        ema.Save(folder["a"]);
        UpdateNumericsTests.RandomizeParameters(model);
        ema.Update(model);
        ema.Save(folder["b"]);
        File.Copy(Path.Combine(folder["b"], "__0_0.distcp"), Path.Combine(folder["a"], "__0_0.distcp"), overwrite: true);

        using var target = new EmaManager<BareParameters>(model, 0.5);
        var before = target.StateDict().ToDictionary(kv => kv.Key, kv => kv.Value.data<float>().ToArray());
        var e = Assert.Throws<CheckpointFormatException>(() => target.Load(folder["a"]));
        Assert.Contains("another save", e.Message);
        Assert.All(target.StateDict(), kv => Assert.Equal(before[kv.Key], kv.Value.data<float>().ToArray()));

        // The same with the .metadata taken from the other save instead.
        File.Copy(Path.Combine(folder["b"], ".metadata"), Path.Combine(folder["a"], ".metadata"), overwrite: true);
        File.Copy(Path.Combine(folder["b"], "__0_0.distcp"), Path.Combine(folder["b"], "keep"), overwrite: true);
        ema.Save(folder["b"]);
        File.Copy(Path.Combine(folder["b"], "__0_0.distcp"), Path.Combine(folder["a"], "__0_0.distcp"), overwrite: true);
        Assert.Contains("another save", Assert.Throws<CheckpointFormatException>(() => target.Load(folder["a"])).Message);
    }

    [Fact]
    public void AnItemPointedAtAnotherKeyIsRefused()
    {
        using var folder = TestPaths.NewTempFolder();
        DcpWriter.Save(folder["ckpt"], new List<KeyValuePair<string, object?>>
        {
            new("x", torch.ones(4)), new("y", torch.zeros(4)), new("n", 1L), new("m", 2L),
        });
        var path = Path.Combine(folder["ckpt"], ".metadata");
        var metadata = DcpMetadataReader.Read(File.ReadAllBytes(path), "ckpt");
        var zero = new DcpChunk(new long[] { 0 }, new long[] { 4 }).OffsetsKey;
        // Swapped, each item still has one key: consistent for the metadata, refused by the items' seals.
        (metadata.Storage[("x", zero)], metadata.Storage[("y", zero)]) = (metadata.Storage[("y", zero)], metadata.Storage[("x", zero)]);
        (metadata.Storage[("n", null)], metadata.Storage[("m", null)]) = (metadata.Storage[("m", null)], metadata.Storage[("n", null)]);
        File.WriteAllBytes(path, DcpMetadataWriter.Write(metadata));

        var reader = DcpReader.Open(folder["ckpt"]);
        Assert.Contains("holds key 'y'", Assert.Throws<CheckpointFormatException>(() => reader.ReadTensor("x")).Message);
        Assert.Contains("holds key 'm'", Assert.Throws<CheckpointFormatException>(() => reader.ReadValue("n")).Message);

        // Pointed at the same bytes as another key (one offset changed onto another item): refused when the folder opens,
        // which protects PyTorch's unsealed checkpoints too.
        metadata.Storage[("x", zero)] = metadata.Storage[("y", zero)];
        File.WriteAllBytes(path, DcpMetadataWriter.Write(metadata));
        Assert.Contains("share bytes", Assert.Throws<CheckpointFormatException>(() => DcpReader.Open(folder["ckpt"])).Message);
    }

    // ---- 5. every value a manager needs must be there ----

    [Theory]
    [InlineData("ema._emagen.step")]
    [InlineData("ema._emagen.decay")]
    [InlineData("ema._emagen.format")]
    public void AMissingManagerValueFailsTheLoad(string key)
    {
        using var folder = TestPaths.NewTempFolder();
        using var model = new BareParameters(reflection: false);
        using var ema = new EmaManager<BareParameters>(model, 0.5);
        ema.Update(model);
        ema.Update(model);
        ema.Save(folder["ckpt"]);
        RenameKey(folder["ckpt"], key, key.Replace("_emagen.", "_emagen.x"));

        using var target = new EmaManager<BareParameters>(model, 0.5);
        var e = Assert.Throws<CheckpointFormatException>(() => target.Load(folder["ckpt"]));
        Assert.Contains(key.EndsWith("format") ? "format" : key, e.Message);
        Assert.Equal(0, target.Step);
    }

    [Fact]
    public void AMultiProfileCheckpointNeedsItsTopLevelStep()
    {
        using var folder = TestPaths.NewTempFolder();
        using var model = new BareParameters(reflection: false);
        var options = new EmaOptions { Profiles = [new("fast", EmaSchedule.Constant(0.5)), new("slow", EmaSchedule.Constant(0.9))] };
        using var ema = new EmaManager<BareParameters>(model, options);
        ema.Update(model);
        ema.Save(folder["ckpt"]);
        RenameKey(folder["ckpt"], "ema._emagen.step", "ema._emagen.stfp");
        using var target = new EmaManager<BareParameters>(model, options);
        Assert.Contains("ema._emagen.step", Assert.Throws<CheckpointFormatException>(() => target.Load(folder["ckpt"])).Message);
    }

    [Fact]
    public void APlainStateDictWithoutManagerValuesLoadsAndKeepsTheStep()
    {
        using var folder = TestPaths.NewTempFolder();
        using var model = new BareParameters(reflection: false);
        using var ema = new EmaManager<BareParameters>(model, 0.5);
        DcpWriter.Save(folder["plain"], ema.StateDict().Select(kv => new KeyValuePair<string, object?>("ema." + kv.Key, kv.Value.mul(2))).ToList());
        ema.Update(model);
        ema.Load(folder["plain"]);
        Assert.Equal(1, ema.Step);
        Assert.Equal(model.parameters().First().mul(2).data<float>().ToArray(), ema["alpha"].data<float>().ToArray());
    }

    // ---- 6. only the documented exception type ----

    [Fact]
    public void ADataFileThatIsAFolderIsACheckpointError()
    {
        using var folder = TestPaths.NewTempFolder();
        DcpWriter.Save(folder["ckpt"], new[] { new KeyValuePair<string, object?>("w", torch.ones(2)) });
        var file = Path.Combine(folder["ckpt"], "__0_0.distcp");
        File.Delete(file);
        Directory.CreateDirectory(file);
        var e = Assert.Throws<CheckpointFormatException>(() => DcpReader.Open(folder["ckpt"]).ReadTensor("w"));
        Assert.Contains("__0_0.distcp", e.Message);
    }

    [Fact]
    public void AnItemOfAnotherDtypeOrShapeIsRejectedBeforeItIsRead()
    {
        using var folder = TestPaths.NewTempFolder();
        DcpWriter.Save(folder["ckpt"], new[] { new KeyValuePair<string, object?>("w", torch.ones(2, 3)) });
        var path = Path.Combine(folder["ckpt"], ".metadata");
        var metadata = DcpMetadataReader.Read(File.ReadAllBytes(path), "ckpt");
        var entry = (DcpTensorEntry)metadata.Entries[0];
        metadata.Entries[0] = entry.With(dType: "float64");
        File.WriteAllBytes(path, DcpMetadataWriter.Write(metadata));
        var e = Assert.Throws<CheckpointFormatException>(() => DcpReader.Open(folder["ckpt"]).ReadTensor("w"));
        Assert.Contains("float32 (2, 3), the metadata declares float64 (2, 3)", e.Message);
    }

    // ---- 7. memory: hostile inputs cannot buy allocations ----

    [Fact]
    public void ASelfReferencingValueIsRejectedQuickly()
    {
        // EMPTY_LIST MEMOIZE DUP APPEND, then nesting by memo: a list that holds itself, in a few bytes.
        var cyclic = new byte[] { 0x80, 4, (byte)']', 0x94, (byte)'h', 0, (byte)'a', (byte)'.' };
        var clock = System.Diagnostics.Stopwatch.StartNew();
        Assert.Contains("nodes", Assert.Throws<CheckpointFormatException>(() => SafePickleReader.Read(cyclic, "cyclic")).Message);

        // A list of the same list, 40 levels deep: 2^40 nodes as a tree from 40 opcodes.
        var doubling = new List<byte> { 0x80, 4, (byte)']', 0x94, (byte)'0' };
        for (int i = 0; i < 40; i++) doubling.AddRange(new byte[] { (byte)']', (byte)'(', (byte)'h', (byte)i, (byte)'h', (byte)i, (byte)'e', 0x94, (byte)'0' });
        doubling.AddRange(new byte[] { (byte)'h', 40, (byte)'.' });
        Assert.Contains("nodes", Assert.Throws<CheckpointFormatException>(() => SafePickleReader.Read(doubling.ToArray(), "doubling")).Message);
        Assert.True(clock.ElapsedMilliseconds < 2000, $"{clock.ElapsedMilliseconds} ms");
    }

    [Fact]
    public void ADeflatedRecordCannotInflatePastWhatTheMetadataDeclares()
    {
        using var folder = TestPaths.NewTempFolder();
        var dir = folder["ckpt"];
        Directory.CreateDirectory(dir);
        // A 4-element tensor whose pickle claims a 64 MiB storage, the record deflated to a few KiB of zeros.
        var item = EmaGen.Fuzz.Amplification.DeflatedTensorItem(64 << 20, 4);
        File.WriteAllBytes(Path.Combine(dir, "__0_0.distcp"), item);
        var metadata = new DcpMetadata();
        var chunk = new DcpChunk(new long[] { 0 }, new long[] { 4 });
        metadata.Entries.Add(new DcpTensorEntry("w", "float32", new long[] { 4 }, new[] { chunk }));
        metadata.Storage[("w", chunk.OffsetsKey)] = new DcpStorageLocation("__0_0.distcp", 0, item.Length, Array.Empty<string>());
        File.WriteAllBytes(Path.Combine(dir, ".metadata"), DcpMetadataWriter.Write(metadata));

        Assert.True(item.Length < 1 << 20, $"{item.Length} bytes on disk");
        var e = Assert.Throws<CheckpointFormatException>(() => DcpReader.Open(dir).ReadTensor("w"));
        Assert.Contains("inflates to 67108864 bytes, more than the 16", e.Message);
    }

    [Fact]
    public void AStrictLoadRefusesUnexpectedNamesBeforeReadingThem()
    {
        using var folder = TestPaths.NewTempFolder();
        using var model = new BareParameters(reflection: false);
        using var ema = new EmaManager<BareParameters>(model, 0.5);
        ema.Save(folder["ckpt"]);
        // 26 extra keys, each pointing at bytes that are no item at all: a load that read them would fail on the archive;
        // one that checks names first fails on the names, and a non-strict load never touches them.
        var path = Path.Combine(folder["ckpt"], ".metadata");
        var metadata = DcpMetadataReader.Read(File.ReadAllBytes(path), "ckpt");
        var alpha = (DcpTensorEntry)metadata.Find("ema.alpha")!;
        var data = Path.Combine(folder["ckpt"], "__0_0.distcp");
        long end = new FileInfo(data).Length;
        File.WriteAllBytes(data, File.ReadAllBytes(data).Concat(new byte[26 * 100]).ToArray());
        for (char c = 'a'; c <= 'z'; c++)
        {
            metadata.Entries.Add(alpha.With(key: "ema.alias_" + c));
            metadata.Storage[("ema.alias_" + c, alpha.Chunks[0].OffsetsKey)] = new DcpStorageLocation("__0_0.distcp", end + (c - 'a') * 100, 100, Array.Empty<string>());
        }
        File.WriteAllBytes(path, DcpMetadataWriter.Write(metadata));
        var e = Assert.Throws<ArgumentException>(() => ema.Load(folder["ckpt"]));
        Assert.Contains("26 unexpected (alias_a, alias_b", e.Message);
        ema.Load(folder["ckpt"], strict: false);
    }

    // ---- 8. staging folders of crashed saves, and a full disk ----

    [Fact]
    public void TheNextSaveRemovesStagingThatNoLiveWriterOwns()
    {
        using var folder = TestPaths.NewTempFolder();
        var target = folder["ckpt"];
        DcpWriter.Save(target, new[] { new KeyValuePair<string, object?>("w", torch.ones(2)) });
        // A crashed save: its lock file is there, nobody holds it.
        var crashed = SaveStaging.PathOf(target, "crashed1");
        Directory.CreateDirectory(crashed);
        File.WriteAllBytes(crashed + ".lock-0", Array.Empty<byte>());
        File.WriteAllBytes(Path.Combine(crashed, "__0_0.distcp"), new byte[1000]);
        File.WriteAllBytes(SaveStaging.PathOf(target, "orphan01") + ".lock-1", Array.Empty<byte>());
        // A live save (this process holds its lock), and a young folder without a lock file: both stay.
        using var live = SaveStaging.Enter(target, "live0001", rank: 0);
        var young = SaveStaging.PathOf(target, "young001");
        Directory.CreateDirectory(young);

        DcpWriter.Save(target, new[] { new KeyValuePair<string, object?>("w", torch.zeros(2)) });
        Assert.False(Directory.Exists(crashed));
        Assert.True(Directory.Exists(live.Path));
        Assert.True(Directory.Exists(young));
        Assert.False(File.Exists(crashed + ".lock-0"));
        Assert.False(File.Exists(SaveStaging.PathOf(target, "orphan01") + ".lock-1"));
        Assert.True(File.Exists(live.Path + ".lock-0"));

        // Without lock files (an older EmaGen's leftovers) folders go once they are older than the grace period.
        live.Dispose();
        Directory.SetLastWriteTimeUtc(young, DateTime.UtcNow - SaveStaging.UnlockedGrace - TimeSpan.FromMinutes(1));
        Directory.SetLastWriteTimeUtc(live.Path, DateTime.UtcNow - SaveStaging.UnlockedGrace - TimeSpan.FromMinutes(1));
        DcpWriter.Save(target, new[] { new KeyValuePair<string, object?>("w", torch.zeros(2)) });
        Assert.Equal(new[] { "ckpt" }, Directory.GetDirectories(folder.Path).Select(Path.GetFileName));
        Assert.Empty(Directory.GetFiles(folder.Path));
    }

    // ---- helpers ----

    private static string CopyFixture(string name, string destination)
    {
        Directory.CreateDirectory(destination);
        foreach (var file in Directory.GetFiles(TestPaths.Fixture(Path.Combine("dcp-torch113", name))))
        {
            File.Copy(file, Path.Combine(destination, Path.GetFileName(file)));
        }
        return destination;
    }

    private static void RenameKey(string dir, string from, string to)
    {
        var path = Path.Combine(dir, ".metadata");
        var metadata = DcpMetadataReader.Read(File.ReadAllBytes(path), dir);
        int i = metadata.Entries.FindIndex(e => e.Key == from);
        Assert.True(i >= 0, $"no key {from}");
        metadata.Entries[i] = metadata.Entries[i].WithKey(to);
        var location = metadata.Storage[(from, null)];
        metadata.Storage.Remove((from, null));
        metadata.Storage[(to, null)] = location;
        File.WriteAllBytes(path, DcpMetadataWriter.Write(metadata));
    }

    private static long FindData(string dir, string key)
    {
        var reader = DcpReader.Open(dir);
        var entry = reader.TensorEntry(key);
        var location = reader.Metadata.LocationOf(key, entry.Chunks[0]);
        return FindRecordData(Path.Combine(dir, location.RelativePath), location, "data/0");
    }

    private static long FindRecordData(string file, DcpStorageLocation location, string record)
    {
        using var stream = File.OpenRead(file);
        var archive = EmaGen.Dcp.Zip.TorchArchiveReader.Open(stream, location.Offset, location.Length, file);
        return location.Offset + archive.Get(record).DataOffset;
    }

    private static void FlipByte(string file, long at)
    {
        using var stream = new FileStream(file, FileMode.Open, FileAccess.ReadWrite);
        stream.Position = at;
        int b = stream.ReadByte();
        stream.Position = at;
        stream.WriteByte((byte)(b ^ 0x5a));
    }
}

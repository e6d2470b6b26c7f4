using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Text;
using EmaGen.Dcp;
using EmaGen.Dcp.Pickle;
using EmaGen.Dcp.Zip;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;

namespace EmaGen.Tests.Dcp;

/// <summary>
/// Mutated checkpoints (truncations, flipped bytes, huge lengths, deep nesting, forbidden globals) must fail with
/// <see cref="CheckpointFormatException"/> and a message, never another exception, a hang or a huge allocation.
/// </summary>
public sealed class HostileInputTests
{
    private readonly ITestOutputHelper _output;

    public HostileInputTests(ITestOutputHelper output) => _output = output;

    [Theory]
    [InlineData("os", "system")]
    [InlineData("builtins", "eval")]
    [InlineData("subprocess", "Popen")]
    [InlineData("torch", "load")]
    public void ForbiddenGlobalsAreRejectedByName(string module, string name)
    {
        var pickle = new PickleWriter().Global(module, name).Mark().String("echo pwned").Tuple().Reduce().Finish();
        var e = Assert.Throws<CheckpointFormatException>(() => SafePickleReader.Read(pickle, "evil.pkl"));
        Assert.Contains($"'{module}.{name}' is not allowed", e.Message);
        Assert.Contains("evil.pkl", e.Message);
    }

    [Fact]
    public void DeepNestingAndHugeLengthsAreBounded()
    {
        var deep = new byte[] { 0x80, 2 }.Concat(Enumerable.Repeat((byte)'(', 100_000)).Append((byte)'.').ToArray();
        Assert.Contains("nesting deeper", Assert.Throws<CheckpointFormatException>(() => SafePickleReader.Read(deep, "deep")).Message);

        var hugeString = new byte[] { 0x80, 4, 0x8d, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, (byte)'.' };
        Assert.Contains("exceeds", Assert.Throws<CheckpointFormatException>(() => SafePickleReader.Read(hugeString, "huge")).Message);

        var hugeFrame = new byte[] { 0x80, 4, 0x95, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, (byte)'N', (byte)'.' };
        Assert.Contains("FRAME", Assert.Throws<CheckpointFormatException>(() => SafePickleReader.Read(hugeFrame, "frame")).Message);

        var tuples = new List<byte> { 0x80, 2, (byte)'N' };
        for (int i = 0; i < 100_000; i++) tuples.Add(0x85); // TUPLE1 nests without MARK; consumers bound their recursion
        tuples.Add((byte)'.');
        Assert.IsType<PickleTuple>(SafePickleReader.Read(tuples.ToArray(), "tuples"));
    }

    [Fact]
    public void MutatedCheckpointsFailOnlyWithTheDocumentedException()
    {
        using var folder = TestPaths.NewTempFolder();
        var source = folder["source"];
        DcpWriter.Save(source, new List<KeyValuePair<string, object?>>
        {
            new("w", torch.arange(12, dtype: torch.ScalarType.Float32).reshape(3, 4)),
            new("b", torch.ones(3, dtype: torch.ScalarType.BFloat16)),
            new("step", 5L),
            new("cfg", new Dictionary<string, object?> { ["lr"] = 0.1, ["names"] = new List<object?> { "a", "b" } }),
        });
        var metadata = File.ReadAllBytes(Path.Combine(source, ".metadata"));
        var data = File.ReadAllBytes(Path.Combine(source, "__0_0.distcp"));
        var random = new Random(1234);
        var clock = Stopwatch.StartNew();
        int cases = 0, rejected = 0;

        // 1. Metadata pickles, parsed in memory.
        for (int i = 0; i < 2500; i++, cases++)
        {
            var mutated = Mutate(metadata, random);
            rejected += Expect(() => DcpMetadataReaderProxy.Read(mutated), $"metadata case {i}");
        }

        // 2. torch.save archives: each item of the data file, mutated and decoded from memory.
        var reader = DcpReader.Open(source);
        var items = reader.Metadata.Storage.Values.ToList();
        for (int i = 0; i < 1500; i++, cases++)
        {
            var item = items[random.Next(items.Count)];
            var bytes = Mutate(data.AsSpan((int)item.Offset, (int)item.Length).ToArray(), random);
            rejected += Expect(() =>
            {
                using var stream = new MemoryStream(bytes);
                var archive = TorchArchiveReader.Open(stream, 0, bytes.Length, $"item case {i}");
                var value = TorchSaveCodec.ReadItem(archive, $"item case {i}", expect: null);
                (value as IDisposable)?.Dispose();
            }, $"item case {i}");
        }

        // 3. Whole folders with a damaged data file, read through the public reader.
        var target = folder["damaged"];
        Directory.CreateDirectory(target);
        File.WriteAllBytes(Path.Combine(target, ".metadata"), metadata);
        for (int i = 0; i < 300; i++, cases++)
        {
            File.WriteAllBytes(Path.Combine(target, "__0_0.distcp"), Mutate(data, random));
            rejected += Expect(() =>
            {
                var damaged = DcpReader.Open(target);
                foreach (var entry in damaged.Entries)
                {
                    if (entry is DcpTensorEntry) damaged.ReadTensor(entry.Key).Dispose();
                    else damaged.ReadValue(entry.Key);
                }
            }, $"folder case {i}");
        }
        _output.WriteLine($"{cases} cases, {rejected} rejected, {clock.Elapsed.TotalSeconds:F1} s");
        Assert.True(rejected > cases / 2, $"only {rejected} of {cases} mutations were rejected; the mutator is too weak");
        Assert.True(clock.Elapsed < TimeSpan.FromMinutes(1), $"{cases} cases took {clock.Elapsed}");
    }

    // Returns 1 when the input was rejected (with the documented exception), 0 when it was accepted.
    private static int Expect(Action read, string what)
    {
        try
        {
            read();
            return 0;
        }
        catch (CheckpointFormatException e)
        {
            Assert.False(string.IsNullOrWhiteSpace(e.Message), $"{what}: empty message");
            return 1;
        }
        catch (Exception e)
        {
            Assert.Fail($"{what}: {e.GetType().Name} instead of CheckpointFormatException: {e}");
            return 0;
        }
    }

    private static byte[] Mutate(byte[] original, Random random)
    {
        var bytes = (byte[])original.Clone();
        switch (random.Next(6))
        {
            case 0: // truncate
                return bytes.AsSpan(0, random.Next(bytes.Length)).ToArray();
            case 1: // flip a few bytes
                for (int k = random.Next(1, 8); k > 0; k--) bytes[random.Next(bytes.Length)] ^= (byte)random.Next(1, 256);
                return bytes;
            case 2: // a run of 0xFF: huge lengths, counts and offsets
                {
                    int at = random.Next(bytes.Length);
                    for (int k = 0; k < 8 && at + k < bytes.Length; k++) bytes[at + k] = 0xFF;
                    return bytes;
                }
            case 3: // a forbidden global spliced into the middle
                {
                    int at = random.Next(bytes.Length);
                    var evil = Encoding.ASCII.GetBytes("cos\nsystem\n");
                    return bytes.Take(at).Concat(evil).Concat(bytes.Skip(at)).ToArray();
                }
            case 4: // deep nesting spliced in
                {
                    int at = random.Next(bytes.Length);
                    return bytes.Take(at).Concat(Enumerable.Repeat((byte)'(', 5000)).Concat(bytes.Skip(at)).ToArray();
                }
            default: // random garbage tail
                {
                    int at = random.Next(bytes.Length);
                    for (int k = at; k < bytes.Length; k++) bytes[k] = (byte)random.Next(256);
                    return bytes;
                }
        }
    }
}

/// <summary>Reaches the internal metadata decoder for the in-memory fuzz cases.</summary>
internal static class DcpMetadataReaderProxy
{
    public static DcpMetadata Read(byte[] bytes) => DcpMetadataReader.Read(bytes, "fuzzed .metadata");
}

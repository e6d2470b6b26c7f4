using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.IO.Compression;
using System.Linq;
using EmaGen.Dcp;
using EmaGen.Dcp.Pickle;
using EmaGen.Dcp.Zip;
using TorchSharp;

namespace EmaGen.Fuzz;

/// <summary>
/// The three memory-amplification inputs the campaign reported, rebuilt and measured (peak resident memory above the
/// process's size before each): a small folder whose deflated records claim 2 GiB, read with two such keys; 26 keys
/// aliasing one 100 MB item under a strict load; an 11-byte self-referencing value pickle, inspected as text and JSON.
/// Exit code 0 when every case is refused with the documented error and stays under the budget.
/// </summary>
public static class Amplification
{
    public static int Run(Options options)
    {
        var root = Path.Combine(Path.GetTempPath(), "emagen-amplification-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(root);
        var rows = new List<(string Case, string Result, long Peak, double Seconds)>();
        try
        {
            var deflate = DeflateBomb(Path.Combine(root, "deflate"));
            rows.Add(Measure("deflated records claiming 2 GiB, two keys", () =>
            {
                var reader = DcpReader.Open(deflate);
                foreach (var key in new[] { "a", "b" }) reader.ReadTensor(key).Dispose();
                return null;
            }, $"{FolderBytes(deflate) / 1e6:F1} MB folder"));

            var (aliases, model) = Aliases(Path.Combine(root, "aliases"));
            using (model)
            {
                using var ema = new EmaManager<FuzzNet>(model, 0.9);
                rows.Add(Measure("26 keys aliasing a 100 MB item, strict Load", () => { ema.Load(aliases); return null; }, null));
            }

            var cyclic = SelfReference(Path.Combine(root, "cyclic"));
            foreach (var json in new[] { false, true })
            {
                rows.Add(Measure($"11-byte self-referencing pickle, inspect{(json ? " --json" : "")}", () =>
                {
                    var output = new StringWriter();
                    int code = EmaGen.Cli.CliApp.Run(json ? new[] { "inspect", cyclic, "--json" } : new[] { "inspect", cyclic }, output, output);
                    var text = output.ToString();
                    // The value must come back undecoded (kept as raw bytes), never expanded.
                    return $"exit {code}, {text.Length} chars, value {(text.Contains("not decoded") || text.Contains("raw_pickle_bytes") ? "kept raw (not decoded)" : "DECODED")}";
                }, null));
            }
        }
        finally
        {
            try { Directory.Delete(root, recursive: true); } catch (IOException) { }
        }
        Console.WriteLine($"{"case",-48}{"peak RSS growth",16}{"seconds",9}  result");
        bool ok = true;
        foreach (var (name, result, peak, seconds) in rows)
        {
            Console.WriteLine($"{name,-48}{peak / 1e6,13:F0} MB{seconds,9:F2}  {result}");
            ok &= peak < options.MemoryBudget && !result.Contains("LOADED", StringComparison.Ordinal) && !result.Contains("OTHER", StringComparison.Ordinal)
                && !result.Contains("DECODED", StringComparison.Ordinal);
        }
        Console.WriteLine(ok ? $"all refused under the {options.MemoryBudget >> 20} MB budget" : "FAILED");
        return ok ? 0 : 1;
    }

    // The action returns a description when it ends normally with an acceptable result, null when it loaded what it should not.
    // Every input (the folders, the model and its manager, whose shadows are copies) is built, so written and resident,
    // before the baseline: the figure is what reading adds, on any kernel (docs/checkpoint-trust.md, "Measuring memory").
    private static (string, string, long, double) Measure(string name, Func<string?> action, string? note)
    {
        GC.Collect();
        long baseline = Memory.ResetPeak();
        var clock = Stopwatch.StartNew();
        string result;
        try
        {
            result = action() ?? "LOADED (not refused)";
        }
        catch (Exception e) when (e is CheckpointFormatException or ArgumentException)
        {
            result = e.GetType().Name + ": " + Shorten(e.Message);
        }
        catch (Exception e)
        {
            result = "OTHER " + e.GetType().Name + ": " + Shorten(e.Message);
        }
        double seconds = clock.Elapsed.TotalSeconds;
        long peak = Memory.Peak() - baseline;
        return (name, (note is null ? "" : note + "; ") + result, peak, seconds);
    }

    private static string Shorten(string message)
    {
        var line = message.ReplaceLineEndings(" ");
        return line.Length > 140 ? line[..140] + "..." : line;
    }

    private static long FolderBytes(string dir) => Directory.GetFiles(dir).Sum(f => new FileInfo(f).Length);

    // Two 4-element tensors whose pickles claim 2 GiB storages, each record 2 GiB of zeros deflated to about 2 MB.
    private static string DeflateBomb(string dir)
    {
        Directory.CreateDirectory(dir);
        const long Claimed = 2L << 30;
        var file = Path.Combine(dir, "__0_0.distcp");
        var metadata = new DcpMetadata { SaveId = null };
        var chunk = new DcpChunk(new long[] { 0 }, new long[] { 4 });
        // One item, deflated once, stored under two keys' own byte ranges.
        var bomb = DeflatedTensorItem(Claimed, 4);
        using (var output = new FileStream(file, FileMode.Create))
        {
            foreach (var key in new[] { "a", "b" })
            {
                metadata.Entries.Add(new DcpTensorEntry(key, "float32", new long[] { 4 }, new[] { chunk }));
                metadata.Storage[(key, chunk.OffsetsKey)] = new DcpStorageLocation("__0_0.distcp", output.Position, bomb.Length, Array.Empty<string>());
                output.Write(bomb);
            }
        }
        File.WriteAllBytes(Path.Combine(dir, ".metadata"), DcpMetadataWriter.Write(metadata));
        return dir;
    }

    /// <summary>
    /// A torch.save item for a float32 tensor of <paramref name="elements"/> elements whose pickle claims a storage of
    /// <paramref name="claimedBytes"/> bytes, its data record that many zeros, deflated (about 1/1000 of the size).
    /// </summary>
    public static byte[] DeflatedTensorItem(long claimedBytes, int elements)
    {
        var pickle = new PickleWriter();
        pickle.Global("torch._utils", "_rebuild_tensor_v2").Mark();
        pickle.Mark().String("storage").Global("torch", "FloatStorage").String("0").String("cpu").Int(claimedBytes / 4).Tuple().BinPersId();
        pickle.Int(0).IntTuple(new long[] { elements }).IntTuple(new long[] { 1 }).Bool(false);
        pickle.Global("collections", "OrderedDict").EmptyTuple().Reduce();
        pickle.Tuple().Reduce();
        using var item = new MemoryStream();
        using (var zip = new ZipArchive(item, ZipArchiveMode.Create, leaveOpen: true))
        {
            using (var s = zip.CreateEntry("archive/data.pkl", CompressionLevel.NoCompression).Open()) s.Write(pickle.Finish());
            using (var s = zip.CreateEntry("archive/data/0", CompressionLevel.Optimal).Open())
            {
                var zeros = new byte[1 << 20];
                for (long done = 0; done < claimedBytes; done += zeros.Length) s.Write(zeros, 0, (int)Math.Min(zeros.Length, claimedBytes - done));
            }
            using (var s = zip.CreateEntry("archive/version").Open()) s.Write("3\n"u8);
        }
        return item.ToArray();
    }

    // A FuzzNet EMA checkpoint plus a 100 MB tensor item and 26 keys under the EMA prefix all pointing at it.
    private static (string, FuzzNet) Aliases(string dir)
    {
        var model = new FuzzNet();
        using (var ema = new EmaManager<FuzzNet>(model, 0.9))
        {
            ema.Save(dir);
        }
        var big = Path.Combine(Path.GetDirectoryName(dir)!, "big");
        using (var tensor = torch.ones(25L << 20)) DcpWriter.Save(big, new[] { new KeyValuePair<string, object?>("ema.big", tensor) });
        var bigMetadata = DcpReader.Open(big).Metadata;
        var bigEntry = (DcpTensorEntry)bigMetadata.Entries[0];
        var bigLocation = bigMetadata.LocationOf("ema.big", bigEntry.Chunks[0]);
        File.Copy(Path.Combine(big, bigLocation.RelativePath), Path.Combine(dir, "__1_0.distcp"));
        var path = Path.Combine(dir, ".metadata");
        var metadata = DcpMetadataReader.Read(File.ReadAllBytes(path), path);
        for (char c = 'a'; c <= 'z'; c++)
        {
            var key = "ema.alias_" + c;
            metadata.Entries.Add(bigEntry.With(key: key));
            metadata.Storage[(key, bigEntry.Chunks[0].OffsetsKey)] = bigLocation with { RelativePath = "__1_0.distcp" };
        }
        File.WriteAllBytes(path, DcpMetadataWriter.Write(metadata));
        return (dir, model);
    }

    // A checkpoint whose only value is a list that holds itself.
    private static string SelfReference(string dir)
    {
        Directory.CreateDirectory(dir);
        using var item = new MemoryStream();
        var archive = new TorchArchiveWriter(item);
        // PROTO 2, EMPTY_LIST, MEMOIZE, BINGET 0, APPEND, BINGET 0, APPEND, STOP: 11 bytes.
        archive.AddRecord("data.pkl", new byte[] { 0x80, 2, (byte)']', 0x94, (byte)'h', 0, (byte)'a', (byte)'h', 0, (byte)'a', (byte)'.' });
        archive.AddText("version", "3\n");
        archive.Finish();
        File.WriteAllBytes(Path.Combine(dir, "__0_0.distcp"), item.ToArray());
        var metadata = new DcpMetadata();
        metadata.Entries.Add(new DcpBytesEntry("value"));
        metadata.Storage[("value", null)] = new DcpStorageLocation("__0_0.distcp", 0, item.Length, Array.Empty<string>());
        File.WriteAllBytes(Path.Combine(dir, ".metadata"), DcpMetadataWriter.Write(metadata));
        return dir;
    }
}

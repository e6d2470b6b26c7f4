using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Threading;
using EmaGen.Dcp;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace EmaGen.Fuzz;

/// <summary>
/// A real full disk during saves: <c>--full-disk N --on DIR</c>, where DIR is a small file system of its own (a 48 MiB
/// tmpfs; <c>tests/Fuzz/full-disk.sh</c> mounts one). For each kind — <c>Save</c>, <c>SaveAsync</c>, <c>emagen
/// convert</c> (safetensors to DCP) — N tries: a previous checkpoint is written, a child process saves an 8 MB EMA, and
/// as soon as its staging folder appears (after the free-space check passed) this process takes every free byte of the
/// file system. Each try must end with the save committed (it won the race) or with an IOException or a one-line CLI
/// error in the child — never an abort — and the folder must then hold the previous checkpoint (or the new one), with
/// nothing staged left.
/// </summary>
public static class FullDiskCampaign
{
    private const string Filler = "filler";

    public static int Run(Options options)
    {
        var dir = options.On ?? throw new ArgumentException("--full-disk needs --on DIR (a small file system of its own)");
        var source = Path.Combine(Path.GetTempPath(), "emagen-full-disk-" + Guid.NewGuid().ToString("N")[..8] + ".safetensors");
        var problems = new List<string>();
        var counts = new Dictionary<string, (int Committed, int Failed, int Aborted)>();
        try
        {
            WriteSafetensors(source);
            foreach (var kind in new[] { "save", "saveasync", "convert" })
            {
                var count = (Committed: 0, Failed: 0, Aborted: 0);
                for (int t = 1; t <= options.FullDisk; t++)
                {
                    Clear(dir);
                    var target = Path.Combine(dir, "ckpt");
                    float previous = t, next = t + 0.5f;
                    SaveModel(target, previous);
                    var (code, stderr) = Child(kind, target, next, source, dir);
                    File.Delete(Path.Combine(dir, Filler));
                    var outcome = code switch
                    {
                        0 => "committed",
                        1 when stderr.Trim().Split('\n').Length == 1 && (stderr.StartsWith("IOException: ", StringComparison.Ordinal) || stderr.StartsWith("emagen: ", StringComparison.Ordinal)) => "failed",
                        _ => "aborted",
                    };
                    if (outcome == "committed") count.Committed++;
                    else if (outcome == "failed") count.Failed++;
                    else
                    {
                        count.Aborted++;
                        problems.Add($"{kind} try {t}: exit {code}: {stderr.Trim().Split('\n')[0]}");
                    }
                    var left = Directory.GetFileSystemEntries(dir).Select(Path.GetFileName).Where(n => n!.StartsWith('.')).ToList();
                    if (left.Count > 0) problems.Add($"{kind} try {t} ({outcome}): left {string.Join(", ", left)}");
                    try
                    {
                        // The convert writes the safetensors file's tensors, not the model's: only its step says which.
                        var reader = DcpReader.Open(target);
                        bool isNew = kind == "convert" ? reader.Metadata.Find("w") is not null : FirstValue(reader) == next;
                        if (outcome != "aborted" && isNew != (outcome == "committed")) problems.Add($"{kind} try {t}: {outcome}, but the folder holds the {(isNew ? "new" : "previous")} checkpoint");
                    }
                    catch (Exception e)
                    {
                        problems.Add($"{kind} try {t} ({outcome}): the checkpoint does not load: {e.Message}");
                    }
                    Console.WriteLine($"{kind} try {t}: {outcome}{(code == 1 ? ": " + stderr.Trim() : "")}");
                }
                counts[kind] = count;
            }
        }
        finally
        {
            File.Delete(source);
        }
        Console.WriteLine($"full-disk campaign on {dir}: {options.FullDisk} tries per kind");
        Console.WriteLine($"{"kind",-12}{"committed",10}{"IOException",12}{"aborted",9}");
        foreach (var (kind, c) in counts) Console.WriteLine($"{kind,-12}{c.Committed,10}{c.Failed,12}{c.Aborted,9}");
        foreach (var p in problems) Console.WriteLine("PROBLEM " + p);
        return problems.Count == 0 ? 0 : 1;
    }

    /// <summary>The child: one save of a model whose every weight is <paramref name="value"/> (or one convert); exit 1 with one line on an IOException.</summary>
    public static int Save(string kind, string target, float value, string source)
    {
        try
        {
            if (kind == "convert")
            {
                return EmaGen.Cli.CliApp.Run(["convert", source, target], TextWriter.Null, Console.Error);
            }
            using var model = new DiskNet(value);
            using var ema = new EmaManager<DiskNet>(model, new EmaOptions { Decay = 0.0 });
            if (kind == "save") ema.Save(target);
            else ema.SaveAsync(target).GetAwaiter().GetResult();
            return 0;
        }
        catch (IOException e)
        {
            Console.Error.WriteLine("IOException: " + e.Message.ReplaceLineEndings(" "));
            return 1;
        }
    }

    private static void SaveModel(string target, float value)
    {
        using var model = new DiskNet(value);
        using var ema = new EmaManager<DiskNet>(model, new EmaOptions { Decay = 0.0 });
        ema.Save(target);
    }

    private static float FirstValue(DcpReader reader)
    {
        using var t = reader.ReadTensor("ema.first.weight");
        return t[0, 0].ToSingle();
    }

    private static void WriteSafetensors(string path)
    {
        using var w = torch.full(new long[] { 2048, 1024 }, 3f);
        SafetensorsFile.Write(path, [new("w", DTypes.Of(w.dtype).Row, w.shape, TensorChunks.Whole("w", w).Bytes)], new Dictionary<string, string> { ["format"] = "pt" });
    }

    // Runs the child and fills the file system the moment its save starts staging.
    private static (int Code, string Stderr) Child(string kind, string target, float value, string source, string dir)
    {
        var (file, prefix) = Options.Self();
        var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in prefix.Concat(["--disk-save", kind, target, value.ToString(System.Globalization.CultureInfo.InvariantCulture), source])) start.ArgumentList.Add(a);
        using var child = Process.Start(start)!;
        var stderr = child.StandardError.ReadToEndAsync();
        var stdout = child.StandardOutput.ReadToEndAsync();
        var filled = false;
        var clock = Stopwatch.StartNew();
        while (!child.HasExited && clock.Elapsed < TimeSpan.FromSeconds(120))
        {
            if (!filled && Directory.EnumerateFileSystemEntries(dir, ".*").Any(n => n.Contains(".saving-") || n.Contains(".tmp-")))
            {
                FillUp(dir);
                filled = true;
            }
            Thread.SpinWait(200);
        }
        if (!child.HasExited) child.Kill();
        child.WaitForExit();
        return (child.ExitCode, stderr.Result + (child.ExitCode is 0 or 1 ? "" : stdout.Result));
    }

    // Takes every free byte at once (preallocated, so no write loop races the save).
    private static void FillUp(string dir)
    {
        long free = new DriveInfo(dir).AvailableFreeSpace;
        for (long size = free; size > 0; size -= 1 << 20)
        {
            try
            {
                using var handle = File.OpenHandle(Path.Combine(dir, Filler), FileMode.Create, FileAccess.Write, FileShare.None, FileOptions.None, size);
                return;
            }
            catch (IOException)
            {
            }
        }
    }

    private static void Clear(string dir)
    {
        foreach (var d in Directory.GetDirectories(dir)) Directory.Delete(d, recursive: true);
        foreach (var f in Directory.GetFiles(dir)) File.Delete(f);
    }
}

/// <summary>An 8.4 MB model (two 1024×1024 layers) whose every weight holds one value.</summary>
[EmaTracked]
public sealed partial class DiskNet : nn.Module<Tensor, Tensor>
{
    private readonly Linear first;
    private readonly Linear second;

    public DiskNet(float value) : base(nameof(DiskNet))
    {
        first = nn.Linear(1024, 1024);
        second = nn.Linear(1024, 1024);
        RegisterComponents();
        using var _ = torch.no_grad();
        foreach (var p in parameters()) p.fill_(value);
    }

    public override Tensor forward(Tensor x) => second.forward(first.forward(x));
}

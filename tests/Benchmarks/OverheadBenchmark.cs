using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Text.Json;
using EmaGen.CompilerServices;
using TorchSharp;
using TorchSharp.Modules;

namespace EmaGen.Benchmarks;

/// <summary>
/// Where a step's time goes besides streaming memory, each part timed from a cold cache like the update benchmark:
/// the generated walk alone, reading every averaged tensor's data pointer (<see cref="LiveSlots.ReadKnownPointers"/>), the whole
/// per-step check (<see cref="LiveSlots"/>) on the caller alone, the check with the update threads woken ahead and
/// sharing its pointer reads (then handed empty work: what a step costs before it streams), the same with the threads
/// woken ahead but not sharing the reads, one run of empty work on sleeping update threads (waking them), and the update.
/// The pointer pass and the shared check are timed twice: as the manager runs them (packed parameters read through
/// handles of the check's own) and reading every tensor through the model's objects (<c>_through_model</c>).
/// <para>
/// Then what the update's stream costs beside a plain loop, each pass over the manager's own packed buffers (the
/// parameters and the shadow), on the same threads and 1 MiB chunks as the update: the update's fp32 kernel under the
/// guard (<c>kernel_guard</c>) and without it (<c>kernel_allow</c>), a plain loop with the update's formula
/// (<c>plain_exact_loop</c>) and the limit's FMA loop (<c>fma_loop</c>). Paired per round: update over kernel_guard is
/// the step's checks and bookkeeping, kernel_guard over kernel_allow the guard, kernel_allow over plain_exact_loop the
/// kernel's shape, plain_exact_loop over fma_loop the exact formula.
/// </para>
/// <c>dotnet run -c Release --project tests/Benchmarks -- overhead --params 5000000 --tensors 1000</c>
/// </summary>
internal static class OverheadBenchmark
{
    public static int Run(string[] args)
    {
        long elements = 5_000_000;
        int tensors = 1000;
        for (int i = 0; i < args.Length; i++)
        {
            if (args[i] == "--params") elements = long.Parse(args[++i], CultureInfo.InvariantCulture);
            else if (args[i] == "--tensors") tensors = int.Parse(args[++i], CultureInfo.InvariantCulture);
            else throw new ArgumentException($"unknown option {args[i]}");
        }
        using var model = new SyntheticModel(elements, tensors, torch.ScalarType.Float32);
        using var ema = new EmaManager<SyntheticModel>(model, 0.999);
        var collector = new SlotCollector();
        SyntheticModel.VisitParameters(model, ref collector);
        var slots = collector.Slots.ToArray();
        // As the manager checks: the packed parameters (where binding put them) read through handles of the check's own.
        var packedAt = slots.Select(s => s.Tensor is { } t ? NativeTensor.DataPointer(t) : IntPtr.Zero).ToArray();
        using var live = new LiveSlots(slots, slots.Select(s => s.Tensor is not null).ToArray(), ties: [], packedAt);
        live.Check(model, null);
        // The same check reading every tensor through the model's own objects and handles (what unpacked tensors get).
        using var throughModel = new LiveSlots(slots, slots.Select(s => s.Tensor is not null).ToArray(), ties: []);
        throughModel.Check(model, null);
        using var pool = new CpuWorkerPool(Math.Max(2, ema.UpdateThreads));
        var nothing = new NoWork();

        var variants = new List<(string, Action)>
        {
            ("walk_only", () => { var v = new CountingVisitor(); SyntheticModel.VisitParameters(model, ref v); }),
            ("pointer_pass", () => live.ReadKnownPointers()),
            ("pointer_pass_through_model", () => throughModel.ReadKnownPointers()),
            ("model_check", () => live.Check(model, null)),
            ("model_check_shared", () => { live.Check(model, pool); pool.Run(nothing); }),
            ("model_check_shared_through_model", () => { throughModel.Check(model, pool); pool.Run(nothing); }),
            ("model_check_unshared", () => { pool.WakeAhead(); live.Check(model, null); pool.Run(nothing); }),
            ("wake_threads_cold", () => pool.Run(nothing)),
            ("update", () => ema.Update(model)),
        };
        var passes = StreamPasses(ema, model, elements);
        variants.AddRange(passes.Select(p => (p.Name, (Action)p.Probe.Run)));
        Console.Error.WriteLine($"{tensors} tensors, {elements:N0} fp32 elements, {ema.UpdateThreads} update threads");
        var samples = Timing.RoundRobin(variants, 31);
        var stream = new MemoryStream();
        using (var writer = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            writer.WriteStartObject();
            writer.WriteNumber("numel", elements);
            writer.WriteNumber("tensors", tensors);
            foreach (var (name, _) in variants)
            {
                double ms = Timing.Median(samples[name]);
                writer.WriteNumber(name + "_ms", Math.Round(ms, 3));
                Console.Error.WriteLine($"{name,-20} {ms,8:F3} ms");
            }
            foreach (var (over, under) in new[] { ("pointer_pass_through_model", "pointer_pass"), ("model_check_shared_through_model", "model_check_shared"), ("update", "kernel_guard"), ("kernel_guard", "kernel_allow"), ("kernel_allow", "plain_exact_loop"), ("plain_exact_loop", "fma_loop"), ("update", "fma_loop") })
            {
                double ratio = UpdateBenchmark.PairedOver(samples[over], samples[under]);
                writer.WriteNumber($"{over}_over_{under}", Math.Round(ratio, 3));
                Console.Error.WriteLine($"{over} / {under} (paired median) {ratio:F3}");
            }
            writer.WriteEndObject();
        }
        Console.WriteLine(System.Text.Encoding.UTF8.GetString(stream.ToArray()));
        return 0;
    }

    // The stream passes over the manager's own buffers: the packed parameters and the shadow of one packed group.
    private static unsafe (string Name, BandwidthProbe Probe)[] StreamPasses(EmaManager<SyntheticModel> ema, SyntheticModel model, long elements)
    {
        if (!ema.UpdatePath.StartsWith("1 group(s), 1 packed", StringComparison.Ordinal))
        {
            throw new InvalidOperationException($"The stream passes need one packed group: {ema.UpdatePath}");
        }
        // The first parameter and its shadow start their group's flat buffers.
        var shadow = (float*)NativeTensor.DataPointer(ema[ema.TrackedNames[0]]);
        var parameters = (float*)NativeTensor.DataPointer(model.parameters().First());
        float decay = (float)ema.Decay;
        return new[]
        {
            ("kernel_guard", BandwidthProbe.Loop.KernelGuard),
            ("kernel_allow", BandwidthProbe.Loop.KernelAllow),
            ("plain_exact_loop", BandwidthProbe.Loop.Exact),
            ("fma_loop", BandwidthProbe.Loop.Fma256),
        }.Select(v => (v.Item1, new BandwidthProbe(shadow, parameters, elements, decay, ema.UpdateThreads, v.Item2))).ToArray();
    }

    private sealed class NoWork : IPartitionedWork
    {
        public void Execute(int part, int parts) { }
    }

    private struct CountingVisitor : IEmaParameterVisitor
    {
        public int Count;
        public void EnterModule(string name, bool ignored) { }
        public void EnterIndex(int index) { }
        public void ExitModule() { }
        public void DynamicModule(torch.nn.Module module, int shardDim) { }
        public void Parameter(string name, Parameter? parameter, bool ignored, int shardDim) => Count++;
        public void Buffer(string name, torch.Tensor? buffer, bool ignored) { }
    }
}

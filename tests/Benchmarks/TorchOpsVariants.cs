using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Runtime.InteropServices;
using System.Text.Json;
using EmaGen.Fuzz;
using TorchSharp;

namespace EmaGen.Benchmarks;

/// <summary>
/// The TorchSharp-op backend (what a CUDA model runs) forced on the CPU, with the non-finite guard set to allow
/// (<c>emagen_torch_ops</c>) and at its default (<c>emagen_torch_ops_guarded</c>), each on its own copy of the model,
/// and the native memory updates add beyond the bound model and its shadows, measured (not computed) from the
/// kernel's peak resident set.
/// </summary>
internal sealed partial class TorchOpsVariants : IDisposable
{
    private readonly SyntheticModel _model;
    private readonly SyntheticModel _guardedModel;
    private readonly EmaManager<SyntheticModel> _ema;
    private readonly EmaManager<SyntheticModel> _guarded;
    private long _peakExtra = -1, _guardedPeakExtra = -1;
    private double _managedPerUpdate;

    private readonly Func<SyntheticModel> _newModel;
    private readonly EmaOptions _allow, _guard;

    public TorchOpsVariants(IReadOnlyList<long[]> shapes, torch.ScalarType dtype, double decay, int? threads, bool dynamic)
    {
        _newModel = () => new SyntheticModel(shapes, dtype, dynamic);
        _allow = new EmaOptions { Decay = decay, Threads = threads, ForceTorchOps = true, NonFinite = NonFinitePolicy.Allow };
        _guard = new EmaOptions { Decay = decay, Threads = threads, ForceTorchOps = true };
        _model = _newModel();
        _guardedModel = _newModel();
        _ema = new EmaManager<SyntheticModel>(_model, _allow);
        _guarded = new EmaManager<SyntheticModel>(_guardedModel, _guard);
    }

    public IEnumerable<(string Name, int Bytes, Action Step)> Variants(int bytesPerElement) =>
    [
        ("emagen_torch_ops", bytesPerElement, () => _ema.Update(_model)),
        ("emagen_torch_ops_guarded", bytesPerElement, () => _guarded.Update(_guardedModel)),
    ];

    /// <summary>
    /// After the timed rounds: each variant's peak extra bytes, on a fresh model and manager (bound, so the model and
    /// its shadows are resident; its first updates included, so buffers the backend keeps count too); managed bytes
    /// per update of the timed allow variant.
    /// </summary>
    public void Measure()
    {
        _peakExtra = FreshPeakExtraBytes(_allow);
        _guardedPeakExtra = FreshPeakExtraBytes(_guard);
        long before = GC.GetAllocatedBytesForCurrentThread();
        const int updates = 20;
        for (int i = 0; i < updates; i++) _ema.Update(_model);
        _managedPerUpdate = (double)(GC.GetAllocatedBytesForCurrentThread() - before) / updates;
    }

    public void Write(Utf8JsonWriter writer, Dictionary<string, List<double>> samples, string limit, int bytesPerElement)
    {
        writer.WriteNumber("torch_ops_ratio_to_limit", Math.Round(UpdateBenchmark.PairedRatio(samples["emagen_torch_ops"], samples[limit], bytesPerElement), 3));
        writer.WriteNumber("torch_ops_guarded_ratio_to_limit", Math.Round(UpdateBenchmark.PairedRatio(samples["emagen_torch_ops_guarded"], samples[limit], bytesPerElement), 3));
        writer.WriteNumber("torch_ops_peak_extra_bytes", _peakExtra);
        writer.WriteNumber("torch_ops_guarded_peak_extra_bytes", _guardedPeakExtra);
        writer.WriteNumber("torch_ops_managed_bytes_per_update", _managedPerUpdate);
        writer.WriteString("torch_ops_update_path", _ema.UpdatePath);
    }

    // The largest of three fresh measurements. Each is a lower bound of the update's peak: native memory freed inside
    // the window lowers the resident set by as much. The finalizers a collection starts free earlier tensors' memory
    // on their own thread, so the collection waits for them (without that, one bf16 run at 50M read 23 MB and one
    // attempt 2.8 MB, where the update's scratch alone is 48 MiB).
    private long FreshPeakExtraBytes(EmaOptions options)
    {
        long peak = -1;
        for (int attempt = 0; attempt < 3; attempt++)
        {
            using var model = _newModel();
            using var ema = new EmaManager<SyntheticModel>(model, options);
            peak = Math.Max(peak, PeakExtraBytes(() => ema.Update(model)));
        }
        return peak;
    }

    // Pending finalizers run and free heap memory goes back to the kernel first (malloc_trim), so a temporary the update
    // allocates must take fresh pages and shows in the peak; then the peak is reset to the current resident set and read after a few updates.
    // −1 where the kernel does not offer the reset (not Linux).
    private static long PeakExtraBytes(Action update)
    {
        try
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            GC.Collect();
            MallocTrim(0);
            long before = Memory.ResetPeak();
            for (int i = 0; i < 3; i++) update();
            return Memory.Peak() - before;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or DllNotFoundException or EntryPointNotFoundException)
        {
            return -1;
        }
    }

    [LibraryImport("libc", EntryPoint = "malloc_trim")]
    private static partial int MallocTrim(nuint pad);

    public void Dispose()
    {
        _ema.Dispose();
        _guarded.Dispose();
        _model.Dispose();
        _guardedModel.Dispose();
    }
}

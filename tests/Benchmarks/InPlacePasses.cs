using System;
using System.Collections.Generic;
using System.Linq;
using EmaGen;
using EmaGen.Benchmarks;
using TorchSharp;

/// <summary>
/// The reference in-place passes an update is measured against, over two flat fp32 buffers of a given element count
/// (12 bytes per element): three tuned loops on the update's worker pool (Vector512 FMA, Vector256 FMA,
/// TensorPrimitives.Lerp) and LibTorch's own multi-threaded flat <c>lerp_</c>. The fastest of them in a run is the limit.
/// Beside them, the Vector512 loop over the memory the update itself streams: the default manager's own flat shadow and
/// packed parameter buffers where the caller hands them over, else two buffers allocated the way the manager allocates
/// its own (on transparent huge pages where the system offers them, see HugePages). The update's memory must not be
/// what beats the limit, so this pass counts toward it too; over the very same pages it also carries the same luck of
/// where a virtual machine's host put them, which two other buffers would not.
/// </summary>
internal sealed unsafe class InPlacePasses : IDisposable
{
    private readonly torch.Tensor _a;
    private readonly torch.Tensor _b;
    private readonly torch.Tensor _weight;
    private readonly torch.Tensor _bf16;
    private readonly BandwidthProbe[] _probes;
    private readonly BandwidthProbe _bf16Probe;
    private readonly torch.Tensor? _ownMemoryA;
    private readonly torch.Tensor? _ownMemoryB;
    private readonly BandwidthProbe _ownMemoryProbe;

    /// <param name="ownMemory">The update's own fp32 shadow and fp32 parameter buffers, at least <paramref name="elements"/> long each, for the pass over its memory (null: buffers allocated as the manager allocates its own).</param>
    public InPlacePasses(long elements, double decay, int threads, (IntPtr Shadow, IntPtr Parameters)? ownMemory = null)
    {
        _a = torch.randn(elements);
        _b = torch.randn(elements);
        _weight = torch.tensor((float)(1 - decay));
        var pa = (float*)NativeTensor.DataPointer(_a);
        var pb = (float*)NativeTensor.DataPointer(_b);
        _bf16 = torch.randn(elements).to_type(torch.ScalarType.BFloat16);
        _bf16Probe = new BandwidthProbe(pa, (float*)NativeTensor.DataPointer(_bf16), elements, (float)decay, threads, BandwidthProbe.Loop.WidenBFloat16);
        _probes = new[] { BandwidthProbe.Loop.Fma, BandwidthProbe.Loop.TensorPrimitivesLerp, BandwidthProbe.Loop.Fma256 }
            .Select(loop => new BandwidthProbe(pa, pb, elements, (float)decay, threads, loop)).ToArray();
        if (ownMemory is { } own)
        {
            // a = a*d + b*w over the shadow and the parameters: the same traffic as an update, values that stay finite.
            _ownMemoryProbe = new BandwidthProbe((float*)own.Shadow, (float*)own.Parameters, elements, (float)decay, threads, BandwidthProbe.Loop.Fma);
            return;
        }
        _ownMemoryA = HugePages.Zeros(elements, torch.ScalarType.Float32, torch.CPU);
        _ownMemoryB = HugePages.Zeros(elements, torch.ScalarType.Float32, torch.CPU);
        InPlace.Release(_ownMemoryA.copy_(_a), _ownMemoryA);
        InPlace.Release(_ownMemoryB.copy_(_b), _ownMemoryB);
        _ownMemoryProbe = new BandwidthProbe((float*)NativeTensor.DataPointer(_ownMemoryA), (float*)NativeTensor.DataPointer(_ownMemoryB), elements, (float)decay, threads,
            BandwidthProbe.Loop.Fma);
    }

    /// <summary>The name of the pass over the update's own memory (or memory allocated as EmaGen allocates its own).</summary>
    public const string OwnMemoryProbe = "own_memory_probe_fma";

    /// <summary>The passes as benchmark variants (name, bytes per element, step).</summary>
    public IEnumerable<(string Name, int Bytes, Action Step)> Variants()
    {
        yield return ("probe_fma", 12, () => _probes[0].Run());
        yield return ("probe_tensorprimitives", 12, () => _probes[1].Run());
        yield return ("probe_fma256", 12, () => _probes[2].Run());
        yield return ("libtorch_flat_lerp", 12, () =>
        {
            using var _ = torch.no_grad();
            _a.lerp_(_b, _weight);
        });
        yield return (OwnMemoryProbe, 12, () => _ownMemoryProbe.Run());
    }

    /// <summary>The limit for bf16 parameters with fp32 shadows: reads 2 + 4 bytes and writes 4 per element.</summary>
    public (string Name, int Bytes, Action Step) BFloat16Variant() => ("probe_bf16_widen", 10, () => _bf16Probe.Run());

    /// <summary>The fastest pass of a run (lowest median time; all move 12 bytes per element), over either kind of memory.</summary>
    public static string Limit(IReadOnlyDictionary<string, List<double>> samples) =>
        samples.Where(kv => (kv.Key.StartsWith("probe_", StringComparison.Ordinal) && kv.Key != "probe_bf16_widen") || kv.Key is "libtorch_flat_lerp" or OwnMemoryProbe)
            .OrderBy(kv => Timing.Median(kv.Value)).First().Key;

    public void Dispose()
    {
        foreach (var p in _probes) p.Dispose();
        _bf16Probe.Dispose();
        _ownMemoryProbe.Dispose();
        _ownMemoryA?.Dispose();
        _ownMemoryB?.Dispose();
        _bf16.Dispose();
        _a.Dispose();
        _b.Dispose();
        _weight.Dispose();
    }
}

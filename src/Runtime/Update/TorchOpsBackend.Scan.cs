using System;
using TorchSharp;

namespace EmaGen;

// Counting non-finite elements on the device (the throw policy's pre-scan, the report's names, which shadows can heal)
// a slice at a time, so the masks stay within the counted slice budget at any tensor size; one read back per call.
internal sealed partial class TorchOpsBackend
{
    // A slice's temporaries: x − x in x's dtype (at most 8 bytes) and two bool masks. The length is the guarded fp32
    // blend's (11 bytes of temporaries per element), so a host allocator hands the scan and the step the same blocks.
    private const long ScanSliceElements = CountedSliceBudgetBytes / 11 / SliceQuantum * SliceQuantum;

    /// <summary>How many elements of <paramref name="t"/> are NaN or infinite (0 for integer and bool tensors).</summary>
    private long NonFiniteElements(torch.Tensor t)
    {
        if (!DTypes.IsFloatingPoint(t.dtype)) return 0;
        // x − x of a live parameter records no graph.
        using var _ = torch.no_grad();
        // Float64, as the step's counts: exact to 2^53 elements, and added with the same alpha.
        using var total = torch.zeros(1, torch.ScalarType.Float64, t.device);
        AddNonFinite(t, total);
        return (long)total.item<double>();
    }

    private void AddNonFinite(torch.Tensor t, torch.Tensor total)
    {
        var count = new CountEachSlice(this, total);
        ForEachSlice(t, null, ScanSliceElements, ref count);
    }

    private readonly struct CountEachSlice(TorchOpsBackend backend, torch.Tensor total) : ISliceAction
    {
        public void Run(torch.Tensor t, torch.Tensor? unused)
        {
            using var finite = Finite(t);
            using var flagged = finite.logical_not();
            using var count = flagged.count_nonzero();
            InPlace.Release(total.add_(count, backend._one), total);
        }
    }
}

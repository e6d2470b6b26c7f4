using System;
using TorchSharp;

namespace EmaGen;

// The one way the op path cuts a unit into slices (the blend's, the non-finite scan's): along the outer dimensions, so
// that a strided box of a tensor stays a view (flattening it could copy it). The action is a struct, so a step's walk
// allocates no delegate.
internal sealed partial class TorchOpsBackend
{
    private interface ISliceAction
    {
        /// <summary>One slice of the first tensor and, when a second was given, the same slice of it.</summary>
        void Run(torch.Tensor first, torch.Tensor? second);
    }

    // Slices of at most `slice` elements of `first` (and of `second`, shaped like it), in order.
    private static void ForEachSlice<TAction>(torch.Tensor first, torch.Tensor? second, long slice, ref TAction action)
        where TAction : struct, ISliceAction
    {
        long n = first.numel();
        if (n <= slice || first.dim() == 0)
        {
            action.Run(first, second);
            return;
        }
        long rows = first.size(0);
        if (rows == 1)
        {
            using var f = first.select(0, 0);
            using var s = second?.select(0, 0);
            ForEachSlice(f, s, slice, ref action);
            return;
        }
        long perSlice = Math.Max(1, slice / (n / rows));
        for (long r = 0; r < rows; r += perSlice)
        {
            long length = Math.Min(perSlice, rows - r);
            using var f = first.narrow(0, r, length);
            using var s = second?.narrow(0, r, length);
            ForEachSlice(f, s, slice, ref action);
        }
    }
}

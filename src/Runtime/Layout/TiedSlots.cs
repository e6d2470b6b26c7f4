using System;
using System.Collections.Generic;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// Tied weights, found at bind: slots that hold the same tensor — the same object, or the same storage, offset, shape
/// and strides (two Parameter objects over one memory) — are one parameter. The first slot in walk order
/// (<c>named_parameters()</c> order) owns it and names its shadow; the later ones are aliases of it. Tying is a
/// run-time fact (a model may tie in its constructor or after), so it is read from the tensors, not from the layout.
/// </summary>
internal static class TiedSlots
{
    /// <summary>Per slot, the first slot holding the same tensor (the slot itself when none before it does).</summary>
    public static int[] OwnerOf(ParameterSlot[] slots)
    {
        var owner = new int[slots.Length];
        var byObject = new Dictionary<torch.Tensor, int>(ReferenceEqualityComparer.Instance);
        var byPointer = new Dictionary<(IntPtr, DeviceType, int), List<int>>();
        for (int s = 0; s < slots.Length; s++)
        {
            owner[s] = s;
            if (slots[s].Tensor is not { } t) continue;
            if (byObject.TryGetValue(t, out int first))
            {
                owner[s] = first;
                continue;
            }
            byObject.Add(t, s);
            // An empty tensor has no memory to share: only the same object ties it.
            if (t.numel() == 0) continue;
            var key = (LiveSlots.DataPointer(t), t.device_type, t.device_index);
            if (!byPointer.TryGetValue(key, out var candidates)) byPointer[key] = candidates = new List<int>();
            foreach (int c in candidates)
            {
                if (slots[c].IsBuffer == slots[s].IsBuffer && SameView(slots[c].Tensor!, t))
                {
                    owner[s] = c;
                    break;
                }
            }
            if (owner[s] == s) candidates.Add(s);
        }
        return owner;
    }

    /// <summary>True when <paramref name="a"/> and <paramref name="b"/> are one tensor: the same object, or views of one memory with the same dtype, shape and strides.</summary>
    public static bool Same(torch.Tensor a, torch.Tensor b) =>
        ReferenceEquals(a, b)
        || (a.numel() > 0 && a.device_type == b.device_type && a.device_index == b.device_index
            && LiveSlots.DataPointer(a) == LiveSlots.DataPointer(b) && SameView(a, b));

    // Same start is known; the rest of "one tensor": the element type and how the elements are laid out from there.
    private static bool SameView(torch.Tensor a, torch.Tensor b) =>
        a.dtype == b.dtype && a.shape.AsSpan().SequenceEqual(b.shape) && a.stride().AsSpan().SequenceEqual(b.stride());
}

using System;
using System.Collections.Generic;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// Builds a tracked model's generated typed shadow tree (<c>TModel.CreateShadow</c>) over one profile's tensors, for
/// either manager: whole shadows in the dense one, this rank's shards in the sharded one. Every slot becomes an
/// <see cref="EmaShadowEntry"/> (the tensor, or the reason there is none), and the slots of each dynamic submodule an
/// <see cref="EmaDynamicShadow"/> indexed by their names inside it.
/// </summary>
internal static class TypedShadowTree
{
    /// <param name="model">The model the slots were recorded from.</param>
    /// <param name="slots">Every slot in visit order (<see cref="SlotCollector"/>).</param>
    /// <param name="groups">The dynamic submodules met in the walk.</param>
    /// <param name="shadowOf">Per slot index: the profile's tensor for that slot, or null and why there is none.</param>
    public static object Build<TModel>(TModel model, ParameterSlot[] slots, IReadOnlyList<DynamicGroup> groups, Func<int, (torch.Tensor? Tensor, string Reason)> shadowOf)
        where TModel : torch.nn.Module, IEmaTracked<TModel>
    {
        var entries = new List<EmaShadowEntry>();
        var localNames = new List<string>();
        var slotEntries = new EmaShadowEntry?[slots.Length];
        for (int s = 0; s < slots.Length; s++)
        {
            var slot = slots[s];
            if (slot.Ignored) continue;
            var (tensor, reason) = shadowOf(s);
            var entry = new EmaShadowEntry(slot.FullName, tensor, reason);
            slotEntries[s] = entry;
            if (slot.DynamicGroup >= 0) continue;
            entries.Add(entry);
            localNames.Add(slot.LocalName);
        }
        var dynamic = new List<EmaDynamicShadow>();
        foreach (var group in groups)
        {
            if (group.Ignored) continue;
            var names = new string[group.End - group.Start];
            var groupEntries = new EmaShadowEntry[names.Length];
            for (int s = group.Start; s < group.End; s++)
            {
                names[s - group.Start] = slots[s].LocalName;
                groupEntries[s - group.Start] = slotEntries[s]!;
            }
            dynamic.Add(new EmaDynamicShadow(group.FullName, names, groupEntries));
        }
        var builder = new EmaShadowBuilder(entries, localNames, dynamic);
        var root = TModel.CreateShadow(model, builder);
        builder.EnsureComplete();
        return root;
    }
}

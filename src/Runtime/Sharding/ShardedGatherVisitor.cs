using System;
using TorchSharp;
using TorchSharp.Modules;

namespace EmaGen;

/// <summary>
/// Checks each visited slot of the live model against the layout a <see cref="ShardedEmaManager{TModel}"/> recorded
/// (local name, presence, element count) and keeps the tensors for the update, without building names or lists.
/// </summary>
internal struct ShardedGatherVisitor : IEmaParameterVisitor
{
    private readonly ParameterSlot[] _slots;
    private readonly long[] _slotNumel;
    private readonly torch.Tensor?[] _live;
    private readonly DynamicModuleCache _dynamic;
    private int _cursor;

    public ShardedGatherVisitor(ParameterSlot[] slots, long[] slotNumel, torch.Tensor?[] live, DynamicModuleCache dynamic)
    {
        _slots = slots;
        _slotNumel = slotNumel;
        _live = live;
        _dynamic = dynamic;
        _cursor = 0;
        dynamic.Begin();
    }

    public void DynamicModule(torch.nn.Module module, int shardDim)
    {
        var contents = _dynamic.Next(module);
        for (int i = 0; i < contents.Names.Length; i++) Visit(contents.Names[i], contents.Tensors[i]);
    }

    public void EnterModule(string name, bool ignored) { }

    public void EnterIndex(int index) { }

    public void ExitModule() { }

    public void Parameter(string name, Parameter? parameter, bool ignored, int shardDim) => Visit(name, parameter);

    public void Buffer(string name, torch.Tensor? buffer, bool ignored) => Visit(name, buffer);

    public readonly void EnsureComplete()
    {
        if (_cursor != _slots.Length)
        {
            throw new InvalidOperationException($"The model has {_cursor} parameter slots, but had {_slots.Length} when the EMA manager was built.");
        }
    }

    private void Visit(string name, torch.Tensor? tensor)
    {
        int slot = _cursor++;
        if (slot >= _slots.Length)
        {
            throw new InvalidOperationException($"The model has more parameter slots than the {_slots.Length} recorded when the EMA manager was built (extra slot '{name}').");
        }
        var recorded = _slots[slot];
        if (!string.Equals(recorded.LocalName, name, StringComparison.Ordinal) || (tensor?.numel() ?? -1) != _slotNumel[slot])
        {
            throw new InvalidOperationException($"The model's parameter slot {slot} ('{name}') no longer matches '{recorded.FullName}'; the module tree changed.");
        }
        _live[slot] = tensor;
    }
}

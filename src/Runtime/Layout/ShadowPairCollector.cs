using System;
using System.Collections.Generic;
using TorchSharp;
using TorchSharp.Modules;

namespace EmaGen;

/// <summary>
/// Pairs each averaged tensor of a model with its shadow, in visit order (the manager has validated the slots): what
/// <c>CopyTo</c> copies and <c>SwapInto</c> exchanges. Shapes match because the slots' element counts were checked and
/// the shadows were made from the same parameters.
/// </summary>
internal struct ShadowPairCollector : IEmaParameterVisitor
{
    private readonly int[] _parameterOfSlot;
    private readonly ShadowArena _arena;
    private int _slot;

    public ShadowPairCollector(int[] parameterOfSlot, ShadowArena arena)
    {
        _parameterOfSlot = parameterOfSlot;
        _arena = arena;
        _slot = 0;
        Pairs = new List<(torch.Tensor Target, torch.Tensor Shadow)>();
    }

    public List<(torch.Tensor Target, torch.Tensor Shadow)> Pairs { get; }

    public void EnterModule(string name, bool ignored) { }

    public void EnterIndex(int index) { }

    public void ExitModule() { }

    public void DynamicModule(torch.nn.Module module, int shardDim)
    {
        foreach (var tensor in DynamicModuleContents.Read(module).Tensors) Add(tensor);
    }

    public void Parameter(string name, Parameter? parameter, bool ignored, int shardDim) => Add(parameter);

    public void Buffer(string name, torch.Tensor? buffer, bool ignored) => Add(buffer);

    private void Add(torch.Tensor? target)
    {
        int p = _parameterOfSlot[_slot++];
        if (p < 0 || _arena[p] is not { } shadow || target is null) return;
        if (!target.shape.AsSpan().SequenceEqual(shadow.shape))
        {
            throw new InvalidOperationException(
                $"Slot {_slot - 1} has shape [{string.Join(", ", target.shape)}], its shadow [{string.Join(", ", shadow.shape)}].");
        }
        Pairs.Add((target, shadow));
    }
}

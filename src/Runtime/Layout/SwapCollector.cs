using System.Collections.Generic;
using TorchSharp;
using TorchSharp.Modules;

namespace EmaGen;

/// <summary>Pairs each averaged tensor of a model with its shadow, in visit order (the manager has validated the slots).</summary>
internal struct SwapCollector : IEmaParameterVisitor
{
    private readonly int[] _parameterOfSlot;
    private readonly ShadowArena _arena;
    private int _slot;

    public SwapCollector(int[] parameterOfSlot, ShadowArena arena)
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

    public void Parameter(string name, Parameter? parameter, bool ignored) => Add(parameter);

    public void Buffer(string name, torch.Tensor? buffer, bool ignored) => Add(buffer);

    private void Add(torch.Tensor? target)
    {
        int p = _parameterOfSlot[_slot++];
        if (p >= 0 && _arena[p] is { } shadow && target is not null) Pairs.Add((target, shadow));
    }
}

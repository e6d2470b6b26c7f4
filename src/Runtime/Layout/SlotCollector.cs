using System.Collections.Generic;
using System.Text;
using TorchSharp.Modules;

namespace EmaGen;

/// <summary>Builds full dotted names from the visitor's path segments and records every slot; used once, at construction.</summary>
internal struct SlotCollector : IEmaParameterVisitor
{
    private readonly List<string> _path;
    private readonly List<bool> _ignoredStack;
    private int _ignoredDepth;

    public SlotCollector()
    {
        _path = new List<string>();
        _ignoredStack = new List<bool>();
        Slots = new List<ParameterSlot>();
    }

    public List<ParameterSlot> Slots { get; }

    public void EnterModule(string name, bool ignored) => Push(name, ignored);

    public void EnterIndex(int index) => Push(index.ToString(System.Globalization.CultureInfo.InvariantCulture), false);

    public void ExitModule()
    {
        int last = _path.Count - 1;
        if (_ignoredStack[last]) _ignoredDepth--;
        _path.RemoveAt(last);
        _ignoredStack.RemoveAt(last);
    }

    public void Parameter(string name, Parameter? parameter, bool ignored, int shardDim) =>
        Add(name, parameter, ignored, isBuffer: false, shardDim);

    public void Buffer(string name, TorchSharp.torch.Tensor? buffer, bool ignored) =>
        Add(name, buffer, ignored, isBuffer: true, ShardLayout.Replicated);

    private void Add(string name, TorchSharp.torch.Tensor? tensor, bool ignored, bool isBuffer, int shardDim)
    {
        var full = new StringBuilder();
        foreach (var segment in _path) full.Append(segment).Append('.');
        full.Append(name);
        Slots.Add(new ParameterSlot(full.ToString(), name, tensor, ignored || _ignoredDepth > 0, isBuffer, shardDim));
    }

    private void Push(string segment, bool ignored)
    {
        _path.Add(segment);
        _ignoredStack.Add(ignored);
        if (ignored) _ignoredDepth++;
    }
}

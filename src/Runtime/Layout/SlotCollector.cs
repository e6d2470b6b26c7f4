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
        Groups = new List<DynamicGroup>();
    }

    public List<ParameterSlot> Slots { get; }

    /// <summary>The dynamic modules met, in walk order.</summary>
    public List<DynamicGroup> Groups { get; }

    public void DynamicModule(TorchSharp.torch.nn.Module module, int shardDim)
    {
        var contents = DynamicModuleContents.Read(module);
        int group = Groups.Count;
        int start = Slots.Count;
        for (int i = 0; i < contents.Names.Length; i++)
        {
            bool buffer = contents.IsBuffer(i);
            Add(contents.Names[i], contents.Tensors[i], false, buffer, buffer ? ShardLayout.Replicated : shardDim, group);
        }
        Groups.Add(new DynamicGroup(string.Join(".", _path), _ignoredDepth > 0, start, Slots.Count));
    }

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

    private void Add(string name, TorchSharp.torch.Tensor? tensor, bool ignored, bool isBuffer, int shardDim, int dynamicGroup = -1)
    {
        var full = new StringBuilder();
        foreach (var segment in _path) full.Append(segment).Append('.');
        full.Append(name);
        Slots.Add(new ParameterSlot(full.ToString(), name, tensor, ignored || _ignoredDepth > 0, isBuffer, shardDim, dynamicGroup));
    }

    private void Push(string segment, bool ignored)
    {
        _path.Add(segment);
        _ignoredStack.Add(ignored);
        if (ignored) _ignoredDepth++;
    }
}

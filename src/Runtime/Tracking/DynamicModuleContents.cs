using System.Collections.Generic;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// The registered parameters and buffers of a module only run time knows (a <c>Sequential</c>, an <c>LSTM</c>, a
/// <c>TransformerEncoder</c>, a module class without <see cref="EmaTrackedAttribute"/>), read once from TorchSharp's own
/// <c>named_parameters()</c> and <c>named_buffers()</c>: the same names and order TorchSharp gives, no reflection.
/// Parameters come first, then buffers; names are relative to the module (<c>0.weight</c>).
/// </summary>
internal sealed class DynamicModuleContents
{
    private DynamicModuleContents(torch.nn.Module module, string[] names, torch.Tensor[] tensors, int parameterCount)
    {
        Module = module;
        Names = names;
        Tensors = tensors;
        ParameterCount = parameterCount;
    }

    /// <summary>The module read.</summary>
    public torch.nn.Module Module { get; }

    /// <summary>Relative dotted names: parameters in <c>named_parameters()</c> order, then buffers in <c>named_buffers()</c> order.</summary>
    public string[] Names { get; }

    /// <summary>The tensors, aligned with <see cref="Names"/>.</summary>
    public torch.Tensor[] Tensors { get; }

    /// <summary>How many of the entries are parameters (the rest are buffers).</summary>
    public int ParameterCount { get; }

    public bool IsBuffer(int index) => index >= ParameterCount;

    public static DynamicModuleContents Read(torch.nn.Module module)
    {
        var names = new List<string>();
        var tensors = new List<torch.Tensor>();
        foreach (var (name, parameter) in module.named_parameters())
        {
            names.Add(name);
            tensors.Add(parameter);
        }
        int parameters = names.Count;
        foreach (var (name, buffer) in module.named_buffers())
        {
            names.Add(name);
            tensors.Add(buffer);
        }
        return new DynamicModuleContents(module, names.ToArray(), tensors.ToArray(), parameters);
    }
}

/// <summary>
/// The contents of each dynamic module met in one walk of a model, by the order they are met, so that the per-step
/// walk reads no <c>named_parameters()</c> (which allocates) while the module object is the one read before. A new
/// module object in the same place is read afresh; <see cref="Invalidate"/> forces every module to be read again
/// (saves, copies and swaps do, so a parameter re-pointed inside a dynamic module is seen there at the latest).
/// </summary>
internal sealed class DynamicModuleCache
{
    private readonly List<DynamicModuleContents> _contents = new();
    private int _cursor;

    /// <summary>Starts a walk of the model.</summary>
    public void Begin() => _cursor = 0;

    /// <summary>The contents of the next dynamic module of the walk.</summary>
    public DynamicModuleContents Next(torch.nn.Module module)
    {
        int i = _cursor++;
        if (i < _contents.Count)
        {
            if (ReferenceEquals(_contents[i].Module, module)) return _contents[i];
            return _contents[i] = DynamicModuleContents.Read(module);
        }
        var read = DynamicModuleContents.Read(module);
        _contents.Add(read);
        return read;
    }

    /// <summary>Makes the next walk read every dynamic module again.</summary>
    public void Invalidate() => _contents.Clear();
}

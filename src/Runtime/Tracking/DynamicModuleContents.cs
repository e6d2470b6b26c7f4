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

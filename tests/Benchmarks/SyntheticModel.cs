using System;
using System.Collections.Generic;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace EmaGen.Benchmarks;

/// <summary>One parameter of a synthetic model.</summary>
[EmaTracked]
public sealed partial class Leaf : nn.Module<Tensor, Tensor>
{
    private readonly Parameter w;

    public Leaf(long[] shape, ScalarType dtype) : base(nameof(Leaf))
    {
        w = new Parameter(torch.randn(shape).to_type(dtype));
        RegisterComponents();
    }

    public Parameter Weight => w;

    public override Tensor forward(Tensor x) => x;
}

/// <summary>
/// A parameter set shaped like a transformer: per layer two large matrices and four small vectors (norm weights and
/// biases), so about a third of the tensors hold almost all of the elements.
/// </summary>
[EmaTracked]
public sealed partial class SyntheticModel : nn.Module<Tensor, Tensor>
{
    private readonly ModuleList<Leaf> leaves;

    public SyntheticModel(long elements, int tensors, ScalarType dtype) : base(nameof(SyntheticModel))
    {
        leaves = new ModuleList<Leaf>();
        foreach (var shape in Shapes(elements, tensors)) leaves.Add(new Leaf(shape, dtype));
        RegisterComponents();
    }

    public IEnumerable<Parameter> Weights
    {
        get
        {
            foreach (var leaf in leaves) yield return leaf.Weight;
        }
    }

    public override Tensor forward(Tensor x) => x;

    public static List<long[]> Shapes(long elements, int tensors)
    {
        if (tensors < 1 || elements < tensors) throw new ArgumentException("need at least one element per tensor");
        int matrices = Math.Max(1, tensors / 3);
        int vectors = tensors - matrices;
        long width = Math.Clamp(elements / ((long)tensors * 16), 1, 4096);
        long inMatrices = elements - vectors * width;
        if (inMatrices < matrices)
        {
            width = 1;
            inMatrices = elements - vectors;
        }
        var shapes = new List<long[]>();
        for (int layer = 0, m = 0, v = 0; m < matrices || v < vectors; layer++)
        {
            for (int k = 0; k < 2 && m < matrices; k++, m++)
            {
                long size = inMatrices / matrices + (m == matrices - 1 ? inMatrices % matrices : 0);
                shapes.Add(size % width == 0 ? new[] { size / width, width } : new[] { size });
            }
            for (int k = 0; k < 4 && v < vectors; k++, v++) shapes.Add(new[] { width });
        }
        return shapes;
    }
}

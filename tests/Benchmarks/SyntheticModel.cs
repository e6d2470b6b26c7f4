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
    // With dynamic: the same parameters in a ParameterList, a member only run time knows (read from TorchSharp's
    // registered tree at bind time), to measure that path against the typed one.
    private readonly ParameterList list;

    public SyntheticModel(long elements, int tensors, ScalarType dtype) : this(Shapes(elements, tensors), dtype)
    {
    }

    public SyntheticModel(IReadOnlyList<long[]> shapes, ScalarType dtype, bool dynamic = false) : base(nameof(SyntheticModel))
    {
        leaves = new ModuleList<Leaf>();
        list = new ParameterList();
        foreach (var shape in shapes)
        {
            if (dynamic) list.Add(new Parameter(torch.randn(shape).to_type(dtype)));
            else leaves.Add(new Leaf(shape, dtype));
        }
        RegisterComponents();
    }

    /// <summary>
    /// The parameter shapes of a small GPT (12 layers, width 384, 16k vocabulary, 1024 positions): token and position
    /// embeddings, per layer two LayerNorms, fused QKV, output projection and a 4x MLP, each with biases, and a final
    /// LayerNorm. 28.2M elements in 148 tensors, most of them small vectors.
    /// </summary>
    public static List<long[]> GptShapes(int layers = 12, long width = 384, long vocabulary = 16384, long positions = 1024)
    {
        var shapes = new List<long[]> { new[] { vocabulary, width }, new[] { positions, width } };
        for (int layer = 0; layer < layers; layer++)
        {
            shapes.Add(new[] { width });                 // ln1.weight
            shapes.Add(new[] { width });                 // ln1.bias
            shapes.Add(new[] { 3 * width, width });      // attn.qkv.weight
            shapes.Add(new[] { 3 * width });             // attn.qkv.bias
            shapes.Add(new[] { width, width });          // attn.proj.weight
            shapes.Add(new[] { width });                 // attn.proj.bias
            shapes.Add(new[] { width });                 // ln2.weight
            shapes.Add(new[] { width });                 // ln2.bias
            shapes.Add(new[] { 4 * width, width });      // mlp.fc.weight
            shapes.Add(new[] { 4 * width });             // mlp.fc.bias
            shapes.Add(new[] { width, 4 * width });      // mlp.proj.weight
            shapes.Add(new[] { width });                 // mlp.proj.bias
        }
        shapes.Add(new[] { width });                     // ln_f.weight
        shapes.Add(new[] { width });                     // ln_f.bias
        return shapes;
    }

    public IEnumerable<Parameter> Weights
    {
        get
        {
            foreach (var leaf in leaves) yield return leaf.Weight;
            foreach (var p in list) yield return p;
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

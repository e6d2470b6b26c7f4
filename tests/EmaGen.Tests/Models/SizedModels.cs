using EmaGen;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace EmaGen.Tests.Models;

/// <summary>One parameter of a given shape and dtype.</summary>
[EmaTracked]
public sealed partial class SizedLeaf : nn.Module<Tensor, Tensor>
{
    private readonly Parameter w;

    public SizedLeaf(long size, ScalarType dtype) : base(nameof(SizedLeaf))
    {
        w = new Parameter(torch.randn(size).to_type(dtype));
        RegisterComponents();
    }

    public Parameter Weight => w;

    public override Tensor forward(Tensor x) => x;
}

/// <summary>Parameters of arbitrary sizes (odd tails included), for the fast-path tests.</summary>
[EmaTracked]
public sealed partial class SizedModel : nn.Module<Tensor, Tensor>
{
    private readonly ModuleList<SizedLeaf> leaves = new();

    public SizedModel(ScalarType dtype, params long[] sizes) : base(nameof(SizedModel))
    {
        foreach (var size in sizes) leaves.Add(new SizedLeaf(size, dtype));
        RegisterComponents();
    }

    public Parameter this[int index] => leaves[index].Weight;

    public int Count => leaves.Count;

    public override Tensor forward(Tensor x) => x;
}

/// <summary>A model with BatchNorm running statistics and a float buffer field, for buffer tracking.</summary>
[EmaTracked]
public sealed partial class NormModel : nn.Module<Tensor, Tensor>
{
    private readonly Linear fc = nn.Linear(4, 4);
    private readonly BatchNorm1d bn = nn.BatchNorm1d(4);
    private readonly Tensor scale = torch.ones(4);

    public NormModel() : base(nameof(NormModel)) => RegisterComponents();

    public override Tensor forward(Tensor x) => bn.call(fc.call(x)) * scale;
}

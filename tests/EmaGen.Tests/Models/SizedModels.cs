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

/// <summary>The shard map: member and class attributes, built-ins inheriting their member's entry, replicated buffers.</summary>
[EmaTracked]
public sealed partial class ShardMapModel : nn.Module<Tensor, Tensor>
{
    private readonly Linear byRows = nn.Linear(4, 6);
    [EmaShard(1)] private readonly Linear byColumns = nn.Linear(4, 6);
    [EmaReplicate] private readonly Parameter scale = new(torch.ones(3));
    private readonly Parameter vector = new(torch.ones(5));
    private readonly Tensor counter = torch.zeros(2);

    public ShardMapModel() : base(nameof(ShardMapModel)) => RegisterComponents();

    public override Tensor forward(Tensor x) => x;
}

/// <summary>A class-level default: everything replicated except what says otherwise.</summary>
[EmaTracked]
[EmaReplicate]
public sealed partial class ReplicatedByDefault : nn.Module<Tensor, Tensor>
{
    private readonly Parameter whole = new(torch.ones(4));
    [EmaShard] private readonly Parameter split = new(torch.ones(4));

    public ReplicatedByDefault() : base(nameof(ReplicatedByDefault)) => RegisterComponents();

    public override Tensor forward(Tensor x) => x;
}

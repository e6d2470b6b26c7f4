#pragma warning disable EMA011 // the reflection-based registration is the ground truth these tests compare against
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace EmaGen.Tests.Models;

// Each model registers either through TorchSharp's reflection-based RegisterComponents() (base.RegisterComponents(),
// the JIT ground truth) or through the generated override; the name-contract tests compare the two.

[EmaTracked]
public sealed partial class BareParameters : nn.Module<Tensor, Tensor>
{
    private readonly Parameter alpha = new(torch.randn(3));
    private readonly Parameter beta = new(torch.randn(2, 2));
    private readonly Parameter gamma = new(torch.tensor(0.5f));

    public BareParameters(bool reflection) : base(nameof(BareParameters))
    {
        if (reflection) base.RegisterComponents(); else RegisterComponents();
    }

    public override Tensor forward(Tensor x) => x * alpha.sum() + beta.sum() + gamma;
}

[EmaTracked]
public sealed partial class InnerBlock : nn.Module<Tensor, Tensor>
{
    private readonly Linear proj = nn.Linear(4, 4);
    private readonly Parameter scale = new(torch.ones(4));

    public InnerBlock(bool reflection) : base(nameof(InnerBlock))
    {
        if (reflection) base.RegisterComponents(); else RegisterComponents();
    }

    public override Tensor forward(Tensor x) => proj.call(x) * scale;
}

/// <summary>Nested tracked modules, with parameters declared after submodules (named_parameters lists own parameters first).</summary>
[EmaTracked]
public sealed partial class NestedModel : nn.Module<Tensor, Tensor>
{
    private readonly InnerBlock first;
    private readonly Linear middle = nn.Linear(4, 4);
    private readonly InnerBlock second;
    private readonly Parameter bias = new(torch.zeros(4));
    private readonly Tensor counter = torch.zeros(1);
    private readonly ReLU act = nn.ReLU();

    public NestedModel(bool reflection) : base(nameof(NestedModel))
    {
        first = new InnerBlock(reflection);
        second = new InnerBlock(reflection);
        if (reflection) base.RegisterComponents(); else RegisterComponents();
    }

    public override Tensor forward(Tensor x) => act.call(second.call(middle.call(first.call(x)))) + bias;
}

/// <summary>Every built-in module the generator knows, plus parameterless ones.</summary>
[EmaTracked]
public sealed partial class BuiltinsModel : nn.Module<Tensor, Tensor>
{
    private readonly Linear linear = nn.Linear(3, 4);
    private readonly Bilinear bilinear = nn.Bilinear(2, 3, 4);
    private readonly Conv1d conv1 = nn.Conv1d(2, 3, 3);
    private readonly Conv2d conv2 = nn.Conv2d(2, 3, 3);
    private readonly ConvTranspose2d deconv = nn.ConvTranspose2d(3, 2, 3);
    private readonly Embedding embedding = nn.Embedding(10, 4);
    private readonly EmbeddingBag bag = nn.EmbeddingBag(10, 4);
    private readonly LayerNorm layerNorm = nn.LayerNorm(4);
    private readonly GroupNorm groupNorm = nn.GroupNorm(2, 4);
    private readonly BatchNorm1d batchNorm = nn.BatchNorm1d(4);
    private readonly InstanceNorm2d instanceNorm = nn.InstanceNorm2d(4, affine: true);
    private readonly PReLU prelu = nn.PReLU(4);
    private readonly RNNCell rnn = nn.RNNCell(3, 4);
    private readonly LSTMCell lstm = nn.LSTMCell(3, 4);
    private readonly GRUCell gru = nn.GRUCell(3, 4);
    private readonly GELU gelu = nn.GELU();
    private readonly Dropout dropout = nn.Dropout(0.1);
    private readonly MSELoss loss = nn.MSELoss();

    public BuiltinsModel(bool reflection) : base(nameof(BuiltinsModel))
    {
        if (reflection) base.RegisterComponents(); else RegisterComponents();
    }

    public override Tensor forward(Tensor x) => x;
}

/// <summary>ModuleList&lt;T&gt; of built-ins and of tracked blocks: indexed names such as <c>heads.1.weight</c>.</summary>
[EmaTracked]
public sealed partial class ListModel : nn.Module<Tensor, Tensor>
{
    private readonly ModuleList<Linear> heads = new(nn.Linear(4, 2), nn.Linear(4, 3, hasBias: false), nn.Linear(4, 1));
    private readonly ModuleList<InnerBlock> blocks;

    public ListModel(bool reflection) : base(nameof(ListModel))
    {
        blocks = new ModuleList<InnerBlock>(new InnerBlock(reflection), new InnerBlock(reflection));
        if (reflection) base.RegisterComponents(); else RegisterComponents();
    }

    public ModuleList<Linear> Heads => heads;

    public override Tensor forward(Tensor x) => x;
}

/// <summary>
/// An array of tracked blocks. TorchSharp's reflection registration skips arrays, so the reference registers the
/// ModuleList by hand, as a PyTorch user would write <c>self.blocks = nn.ModuleList(...)</c>.
/// </summary>
[EmaTracked]
public sealed partial class ArrayModel : nn.Module<Tensor, Tensor>
{
    private readonly Linear stem = nn.Linear(4, 4);
    private readonly InnerBlock[] blocks;

    public ArrayModel(bool reflection, int count = 3) : base(nameof(ArrayModel))
    {
        blocks = new InnerBlock[count];
        for (int i = 0; i < count; i++) blocks[i] = new InnerBlock(reflection);
        if (reflection)
        {
            base.RegisterComponents();
            register_module("blocks", new ModuleList<InnerBlock>(blocks));
        }
        else
        {
            RegisterComponents();
        }
    }

    public override Tensor forward(Tensor x) => x;
}

/// <summary>Optional parameters that are absent: Linear without bias, LayerNorm without affine, a null Parameter field.</summary>
[EmaTracked]
public sealed partial class OptionalModel : nn.Module<Tensor, Tensor>
{
    private readonly Parameter? missing = null;
    private readonly Parameter present = new(torch.ones(2));
    private readonly Linear noBias = nn.Linear(3, 3, hasBias: false);
    private readonly LayerNorm plainNorm = nn.LayerNorm(new long[] { 3 }, elementwise_affine: false);
    private readonly Linear? absentModule = null;

    public OptionalModel(bool reflection) : base(nameof(OptionalModel))
    {
        if (reflection) base.RegisterComponents(); else RegisterComponents();
    }

    public override Tensor forward(Tensor x) => x;
}

/// <summary>Frozen parameters (requires_grad false at construction) and [EmaIgnore] members: registered, not averaged.</summary>
[EmaTracked]
public sealed partial class FrozenModel : nn.Module<Tensor, Tensor>
{
    private readonly Parameter trained = new(torch.randn(3));
    private readonly Parameter frozen = new(torch.randn(3), requires_grad: false);
    [EmaIgnore] private readonly Parameter probe = new(torch.randn(2));
    private readonly Linear backbone = nn.Linear(3, 3);
    [EmaIgnore] private readonly Linear ignoredHead = nn.Linear(3, 1);
    private readonly Linear head = nn.Linear(3, 2);

    public FrozenModel(bool reflection) : base(nameof(FrozenModel))
    {
        backbone.weight!.requires_grad = false;
        if (reflection) base.RegisterComponents(); else RegisterComponents();
    }

    public override Tensor forward(Tensor x) => x;
}

#pragma warning disable EMA011 // the reflection-based registration is the ground truth these tests compare against
#pragma warning disable EMA013 // untracked module classes on purpose (the warning itself is asserted in DiagnosticTests)
using System.Collections.Generic;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace EmaGen.Tests.Models;

// Models written the way TorchSharp's own examples and community ports write them; only [EmaTracked] and partial are
// added. Each registers either by reflection (the JIT ground truth) or through the generated override.

/// <summary>TorchSharp's ResNet/VGG style: a Sequential of (name, module) pairs in a Module&lt;Tensor, Tensor&gt; field, plus unnamed, nested and empty ones.</summary>
[EmaTracked]
public sealed partial class SequentialModel : nn.Module<Tensor, Tensor>
{
    private readonly nn.Module<Tensor, Tensor> layers;
    private readonly Sequential unnamed = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 4));
    private readonly Sequential empty = nn.Sequential();
    private readonly Linear head = nn.Linear(4, 2);

    public SequentialModel(bool reflection) : base(nameof(SequentialModel))
    {
        layers = nn.Sequential(
            ("conv2d-1", nn.Linear(5, 6)),
            ("relu-1", nn.ReLU()),
            ("blck-8", nn.Sequential(("lin", nn.Linear(6, 6)), ("norm", nn.BatchNorm1d(6)))),
            ("drop", nn.Dropout(0.0)));
        if (reflection) base.RegisterComponents(); else RegisterComponents();
    }

    public override Tensor forward(Tensor x) => head.call(unnamed.call(empty.call(layers.call(x))));
}

/// <summary>A module class of the user's own without [EmaTracked] (TorchSharp registers it by reflection).</summary>
public sealed class UntrackedBlock : nn.Module<Tensor, Tensor>
{
    private readonly Linear proj;
    private readonly Parameter gain = new(torch.ones(4));
    private readonly Tensor steps = torch.zeros(1);

    public UntrackedBlock(int inner) : base(nameof(UntrackedBlock))
    {
        proj = nn.Linear(4, inner);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => proj.call(x * gain);
}

/// <summary>Containers: ModuleDict, a ModuleList of an untracked class, ParameterList/Dict, a base-typed field holding BatchNorm.</summary>
[EmaTracked]
public sealed partial class ContainerModel : nn.Module<Tensor, Tensor>
{
    private readonly ModuleDict<nn.Module<Tensor, Tensor>> heads = new();
    private readonly ModuleList<UntrackedBlock> list = new(new UntrackedBlock(3), new UntrackedBlock(4));
    private readonly UntrackedBlock single = new(5);
    private readonly ParameterList scales = new(new Parameter(torch.ones(3)), new Parameter(torch.ones(2, 2)));
    private readonly ParameterDict extras = new();
    private readonly nn.Module norm = nn.BatchNorm1d(4);
    [EmaIgnore] private readonly Sequential probe = nn.Sequential(nn.Linear(4, 1));

    public ContainerModel(bool reflection) : base(nameof(ContainerModel))
    {
        heads.Add(("cls", nn.Linear(4, 3)));
        heads.Add(("box", nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))));
        extras.Add(("temperature", new Parameter(torch.ones(1))));
        if (reflection) base.RegisterComponents(); else RegisterComponents();
    }

    public override Tensor forward(Tensor x) => single.call(x);
}

/// <summary>Native-backed modules whose parameter set depends on constructor arguments.</summary>
[EmaTracked]
public sealed partial class RecurrentModel : nn.Module<Tensor, Tensor>
{
    private readonly LSTM lstm = nn.LSTM(4, 5, numLayers: 2, bidirectional: true);
    private readonly GRU gru = nn.GRU(4, 3, bias: false);
    private readonly RNN rnn = nn.RNN(3, 3);
    private readonly MultiheadAttention attention = nn.MultiheadAttention(8, 2, kdim: 4, vdim: 6, add_bias_kv: true);
    private readonly MultiheadAttention selfAttention = nn.MultiheadAttention(8, 2);

    public RecurrentModel(bool reflection) : base(nameof(RecurrentModel))
    {
        if (reflection) base.RegisterComponents(); else RegisterComponents();
    }

    public override Tensor forward(Tensor x) => x;
}

/// <summary>The sequence-to-sequence example's encoder, a decoder layer and a whole Transformer.</summary>
[EmaTracked]
public sealed partial class TransformerModel : nn.Module<Tensor, Tensor>
{
    private readonly Embedding embed = nn.Embedding(11, 8);
    private readonly TransformerEncoder encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, 0.0), 2);
    private readonly TransformerDecoderLayer decoderLayer = nn.TransformerDecoderLayer(8, 2, 16, 0.0);
    private readonly TransformerEncoderLayer encoderLayer = nn.TransformerEncoderLayer(8, 2, 16, 0.0);
    private readonly TransformerDecoder decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(8, 2, 16, 0.0), 1);
    private readonly Transformer transformer = nn.Transformer(8, 2, 1, 1, 16, 0.0);
    private readonly Linear lmHead = nn.Linear(8, 11);

    public TransformerModel(bool reflection) : base(nameof(TransformerModel))
    {
        if (reflection) base.RegisterComponents(); else RegisterComponents();
    }

    public override Tensor forward(Tensor tokens) => lmHead.call(encoder.call(embed.call(tokens)));
}

/// <summary>A UNet-style base class of the user's own sharing fields with its subclasses (private, protected, a buffer).</summary>
public abstract class ConvBase : nn.Module<Tensor, Tensor>
{
    private readonly Linear conv = nn.Linear(4, 4);
    protected readonly LayerNorm norm = nn.LayerNorm(4);
    protected Parameter shift = new(torch.zeros(4));
    private readonly Tensor seen = torch.zeros(1);

    protected ConvBase(string name) : base(name) { }

    protected Tensor Conv(Tensor x) => norm.call(conv.call(x)) + shift;
}

/// <summary>A generic base class; the tracked class closes it.</summary>
public abstract class Wrapper<TInner> : ConvBase where TInner : nn.Module<Tensor, Tensor>
{
    private readonly TInner inner;
    protected readonly List<int> notAModule = new();

    protected Wrapper(string name, TInner inner) : base(name) => this.inner = inner;

    protected Tensor Inner(Tensor x) => inner.call(x);
}

[EmaTracked]
public sealed partial class DerivedModel : Wrapper<Linear>
{
    private readonly Parameter own = new(torch.ones(4));
    private readonly Linear head = nn.Linear(4, 2);

    public DerivedModel(bool reflection) : base(nameof(DerivedModel), nn.Linear(4, 4))
    {
        if (reflection) base.RegisterComponents(); else RegisterComponents();
    }

    public override Tensor forward(Tensor x) => head.call(Inner(Conv(x)) * own);
}

/// <summary>Only the top-level class is tracked: its blocks are the user's untouched classes, in a Sequential made of <c>new</c>.</summary>
[EmaTracked]
public sealed partial class TopLevelOnlyModel : nn.Module<Tensor, Tensor>
{
    private readonly nn.Module<Tensor, Tensor> blocks;
    private readonly Linear output = nn.Linear(4, 2);

    public TopLevelOnlyModel(bool reflection) : base(nameof(TopLevelOnlyModel))
    {
        blocks = nn.Sequential(("b0", new UntrackedBlock(4)), ("b1", new UntrackedBlock(4)));
        if (reflection) base.RegisterComponents(); else RegisterComponents();
    }

    public override Tensor forward(Tensor x) => output.call(blocks.call(x));
}

/// <summary>An array of an untracked class: registered as a ModuleList, as for tracked element types (TorchSharp's reflection skips arrays).</summary>
[EmaTracked]
public sealed partial class UntrackedArrayModel : nn.Module<Tensor, Tensor>
{
    private readonly UntrackedBlock[] stages = { new UntrackedBlock(4), new UntrackedBlock(4) };
    private readonly Linear head = nn.Linear(4, 2);

    public UntrackedArrayModel() : base(nameof(UntrackedArrayModel)) => RegisterComponents();

    public override Tensor forward(Tensor x) => head.call(stages[1].call(stages[0].call(x)));
}

/// <summary>
/// Embedding and output head tied the other way round (<c>head.weight = embed.weight</c>): TorchSharp's Embedding hands
/// out another Parameter object over the same tensor, so the two names are two objects over one memory.
/// </summary>
[EmaTracked]
public sealed partial class TiedModel : nn.Module<Tensor, Tensor>
{
    private readonly Embedding embed = nn.Embedding(10, 4);
    private readonly Linear head = nn.Linear(4, 10, hasBias: false);

    public TiedModel(bool tie = true) : base(nameof(TiedModel))
    {
        if (tie) Tie();
        RegisterComponents();
    }

    public void Tie() => head.weight = embed.weight!;

    public Parameter Embedding => embed.weight!;

    public Parameter Head => head.weight!;

    /// <summary>Gives the head a Parameter of its own (a copy): the two names are two tensors again.</summary>
    public void Untie()
    {
        using (torch.no_grad()) head.weight = new Parameter(embed.weight!.clone());
    }

    public override Tensor forward(Tensor x) => head.call(embed.call(x));
}

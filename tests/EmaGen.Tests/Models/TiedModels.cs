using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace EmaGen.Tests.Models;

// Models that tie weights the ways real code does: one Parameter object reached under two names.

/// <summary>
/// GPT-2 style: token and position embeddings, a block, a final norm and an output head whose weight is the token
/// embedding's, tied after the model is built (<see cref="Tie"/>: <c>wte.weight = lm_head.weight</c>, as nanoGPT and
/// GPT-2 ports write it). TorchSharp's <c>named_parameters()</c> then lists the Parameter once, as <c>wte.weight</c>.
/// </summary>
[EmaTracked]
public sealed partial class TiedGptModel : nn.Module<Tensor, Tensor>
{
    public const int Vocabulary = 11, Width = 6;

    private readonly Embedding wte = nn.Embedding(Vocabulary, Width);
    private readonly Embedding wpe = nn.Embedding(5, Width);
    private readonly Linear mlp = nn.Linear(Width, Width);
    private readonly LayerNorm ln_f = nn.LayerNorm(Width);
    private readonly Linear lm_head = nn.Linear(Width, Vocabulary, hasBias: false);

    public TiedGptModel(bool tie = true) : base(nameof(TiedGptModel))
    {
        RegisterComponents();
        if (tie) Tie();
    }

    /// <summary>Points the token embedding at the output head's Parameter object (the old embedding weight is dropped).</summary>
    public void Tie() => wte.weight = lm_head.weight!;

    public Parameter Embedding => wte.weight!;

    public Parameter Head => lm_head.weight!;

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var h = wte.call(x) + wpe.call(torch.arange(x.shape[1], device: x.device));
        return lm_head.call(ln_f.call(h + mlp.call(h))).MoveToOuterDisposeScope();
    }
}

/// <summary>One Linear held in two fields (an encoder reused as the decoder): both names reach its parameters.</summary>
[EmaTracked]
public sealed partial class SharedFieldModel : nn.Module<Tensor, Tensor>
{
    private readonly Linear encoder = nn.Linear(4, 4);
    private readonly Linear head = nn.Linear(4, 2);
    private readonly Linear decoder;

    public SharedFieldModel() : base(nameof(SharedFieldModel))
    {
        decoder = encoder;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => head.call(decoder.call(encoder.call(x)));
}

/// <summary>
/// The head's weight is a Parameter of its own native tensor over the embedding's memory (<c>detach()</c> shares the
/// storage), unlike <c>TiedModel</c>, whose two wrappers share one native tensor: re-pointing one does not move the
/// other, so packing and swaps must re-point both.
/// </summary>
[EmaTracked]
public sealed partial class StorageTiedModel : nn.Module<Tensor, Tensor>
{
    private readonly Embedding embed = nn.Embedding(10, 4);
    private readonly Linear head = nn.Linear(4, 10, hasBias: false);

    public StorageTiedModel() : base(nameof(StorageTiedModel))
    {
        RegisterComponents();
        using (torch.no_grad()) head.weight = new Parameter(embed.weight!.detach());
    }

    public Parameter Embedding => embed.weight!;

    public Parameter Head => head.weight!;

    public override Tensor forward(Tensor x) => head.call(embed.call(x));
}

/// <summary>A buffer that is a view of a parameter's memory (a parameter and a buffer are never one tied tensor).</summary>
[EmaTracked]
public sealed partial class BufferOverParameterModel : nn.Module<Tensor, Tensor>
{
    private readonly Linear a = nn.Linear(3, 3);
    private readonly Linear b = nn.Linear(3, 3);
    private readonly Tensor wref;

    public BufferOverParameterModel() : base(nameof(BufferOverParameterModel))
    {
        wref = a.weight!.detach();
        RegisterComponents();
    }

    public Parameter Other => b.weight!;

    public override Tensor forward(Tensor x) => b.call(a.call(x)) + wref.sum();
}

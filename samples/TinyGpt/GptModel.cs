using System;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace EmaGen.Samples.TinyGpt;

/// <summary>
/// A GPT-style decoder written the way community TorchSharp ports write it: token and position embeddings, pre-norm
/// blocks of TorchSharp's <c>MultiheadAttention</c> and a <c>Sequential</c> MLP held in a <c>Module&lt;Tensor, Tensor&gt;</c>
/// field, a causal-mask buffer and a final norm and head. Only <c>[EmaTracked]</c> and <c>partial</c> were added for EMA.
/// With <c>tieEmbeddings</c> the token embedding is the head's weight, tied GPT-2 style after the modules exist
/// (<c>wte.weight = lm_head.weight</c>): one Parameter under two names, which the EMA keeps once.
/// </summary>
[EmaTracked]
public sealed partial class GptModel : nn.Module<Tensor, Tensor>
{
    private readonly Embedding tokens;
    private readonly Embedding positions;
    private readonly GptBlock[] blocks;
    private readonly LayerNorm finalNorm;
    private readonly Linear head;
    private readonly Tensor causalMask;

    public GptModel(int vocabulary, int context, int width = 64, int depth = 2, int heads = 4, bool tieEmbeddings = false) : base(nameof(GptModel))
    {
        tokens = nn.Embedding(vocabulary, width);
        positions = nn.Embedding(context, width);
        blocks = new GptBlock[depth];
        for (int i = 0; i < depth; i++) blocks[i] = new GptBlock(width, heads);
        finalNorm = nn.LayerNorm(width);
        head = nn.Linear(width, vocabulary);
        causalMask = CausalMask(context);
        RegisterComponents();
        if (tieEmbeddings) tokens.weight = head.weight!;
    }

    /// <param name="input">Token ids, [batch, time] (int64). Returns logits, [batch, time, vocabulary].</param>
    public override Tensor forward(Tensor input)
    {
        using var scope = torch.NewDisposeScope();
        var (h, mask) = Embed(tokens, positions, causalMask, input);
        foreach (var block in blocks) h = block.call(h, mask);
        return head.call(finalNorm.call(h)).MoveToOuterDisposeScope();
    }

    /// <summary>Token plus position embeddings of <paramref name="input"/>, and the causal mask cut to its length.</summary>
    internal static (Tensor Embedded, Tensor Mask) Embed(Embedding tokens, Embedding positions, Tensor causalMask, Tensor input)
    {
        long time = input.shape[1];
        var embedded = tokens.call(input) + positions.call(torch.arange(time, device: input.device));
        return (embedded, causalMask[..(int)time, ..(int)time]);
    }

    /// <summary>-inf above the diagonal: position t attends to positions up to t.</summary>
    internal static Tensor CausalMask(int context) =>
        torch.triu(torch.full(context, context, double.NegativeInfinity), 1);
}

/// <summary>Pre-norm transformer block: x + attention(norm(x)), then x + mlp(norm(x)).</summary>
[EmaTracked]
public sealed partial class GptBlock : nn.Module<Tensor, Tensor, Tensor>
{
    private readonly LayerNorm attentionNorm;
    private readonly MultiheadAttention attention;
    private readonly LayerNorm mlpNorm;
    private readonly nn.Module<Tensor, Tensor> mlp;

    public GptBlock(int width, int heads) : base(nameof(GptBlock))
    {
        attentionNorm = nn.LayerNorm(width);
        attention = nn.MultiheadAttention(width, heads);
        mlpNorm = nn.LayerNorm(width);
        mlp = nn.Sequential(("fc", nn.Linear(width, 4 * width)), ("gelu", nn.GELU()), ("proj", nn.Linear(4 * width, width)));
        RegisterComponents();
    }

    /// <param name="x">[batch, time, width].</param>
    /// <param name="mask">Additive causal mask, [time, time].</param>
    public override Tensor forward(Tensor x, Tensor mask)
    {
        using var scope = torch.NewDisposeScope();
        // TorchSharp's MultiheadAttention is sequence-first: [time, batch, width].
        var normed = attentionNorm.call(x).transpose(0, 1);
        var (attended, _) = attention.call(normed, normed, normed, null, false, mask);
        x = x + attended.transpose(0, 1);
        return (x + mlp.call(mlpNorm.call(x))).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// The same language model on TorchSharp's own <c>TransformerEncoder</c> (the sequence-to-sequence example's
/// building block) with a causal mask: every encoder parameter is found at bind time from LibTorch's module tree.
/// </summary>
[EmaTracked]
public sealed partial class EncoderGptModel : nn.Module<Tensor, Tensor>
{
    private readonly Embedding tokens;
    private readonly Embedding positions;
    private readonly TransformerEncoder encoder;
    private readonly LayerNorm finalNorm;
    private readonly Linear head;
    private readonly Tensor causalMask;

    public EncoderGptModel(int vocabulary, int context, int width = 64, int depth = 2, int heads = 4, bool tieEmbeddings = false) : base(nameof(EncoderGptModel))
    {
        tokens = nn.Embedding(vocabulary, width);
        positions = nn.Embedding(context, width);
        encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(width, heads, 4 * width, dropout: 0.0), depth);
        finalNorm = nn.LayerNorm(width);
        head = nn.Linear(width, vocabulary);
        causalMask = GptModel.CausalMask(context);
        RegisterComponents();
        if (tieEmbeddings) tokens.weight = head.weight!;
    }

    public override Tensor forward(Tensor input)
    {
        using var scope = torch.NewDisposeScope();
        var (h, mask) = GptModel.Embed(tokens, positions, causalMask, input);
        h = encoder.call(h.transpose(0, 1), mask, null).transpose(0, 1);
        return head.call(finalNorm.call(h)).MoveToOuterDisposeScope();
    }
}

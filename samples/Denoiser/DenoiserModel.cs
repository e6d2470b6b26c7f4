using System;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace EmaGen.Samples.Denoiser;

/// <summary>
/// DDPM noise predictor for 2-D points: an MLP with a sinusoidal time embedding and residual blocks.
/// Parameter names follow the fields: inProj.weight, timeMlp.weight, blocks.0.norm.weight, ..., outProj.bias, outGain.
/// </summary>
[EmaTracked]
public sealed partial class DenoiserModel : nn.Module<Tensor, Tensor, Tensor>
{
    private readonly int _timeFeatures;
    private readonly Linear inProj;
    private readonly Linear timeMlp;
    private readonly ResidualBlock[] blocks;
    private readonly LayerNorm outNorm;
    private readonly Linear outProj;
    private readonly Parameter outGain;
    private readonly SiLU act = nn.SiLU();

    public DenoiserModel(int width = 128, int depth = 3, int timeFeatures = 32) : base(nameof(DenoiserModel))
    {
        _timeFeatures = timeFeatures;
        inProj = nn.Linear(2, width);
        timeMlp = nn.Linear(timeFeatures, width);
        blocks = new ResidualBlock[depth];
        for (int i = 0; i < depth; i++) blocks[i] = new ResidualBlock(width);
        outNorm = nn.LayerNorm(width);
        outProj = nn.Linear(width, 2);
        outGain = new Parameter(torch.ones(2));
        RegisterComponents();
    }

    /// <param name="x">Noisy points, [batch, 2].</param>
    /// <param name="t">Diffusion step of each point in [0, T), [batch] (int64).</param>
    public override Tensor forward(Tensor x, Tensor t)
    {
        using var scope = torch.NewDisposeScope();
        var temb = act.call(timeMlp.call(TimeEmbedding(t, _timeFeatures)));
        var h = inProj.call(x);
        foreach (var block in blocks) h = block.call(h, temb);
        var y = outProj.call(act.call(outNorm.call(h))) * outGain;
        return y.MoveToOuterDisposeScope();
    }

    private static Tensor TimeEmbedding(Tensor t, int features)
    {
        int half = features / 2;
        var freqs = torch.exp(torch.arange(half, dtype: ScalarType.Float32) * (-Math.Log(10000.0) / half));
        var args = t.to_type(ScalarType.Float32).unsqueeze(1) * freqs.unsqueeze(0);
        return torch.cat(new[] { torch.sin(args), torch.cos(args) }, 1);
    }
}

/// <summary>Pre-norm residual MLP block with additive time conditioning.</summary>
[EmaTracked]
public sealed partial class ResidualBlock : nn.Module<Tensor, Tensor, Tensor>
{
    private readonly LayerNorm norm;
    private readonly Linear timeProj;
    private readonly Linear fc1;
    private readonly Linear fc2;
    private readonly SiLU act = nn.SiLU();

    public ResidualBlock(int width) : base(nameof(ResidualBlock))
    {
        norm = nn.LayerNorm(width);
        timeProj = nn.Linear(width, width);
        fc1 = nn.Linear(width, 2 * width);
        fc2 = nn.Linear(2 * width, width);
        RegisterComponents();
    }

    public override Tensor forward(Tensor h, Tensor temb)
    {
        using var scope = torch.NewDisposeScope();
        var z = norm.call(h) + timeProj.call(temb);
        var y = h + fc2.call(act.call(fc1.call(act.call(z))));
        return y.MoveToOuterDisposeScope();
    }
}

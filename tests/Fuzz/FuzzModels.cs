using EmaGen;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace EmaGen.Fuzz;

/// <summary>The small model whose EMA checkpoints the fuzzer mutates: matrices, biases and a bare parameter.</summary>
[EmaTracked]
public sealed partial class FuzzNet : nn.Module<Tensor, Tensor>
{
    private readonly Linear inProj;
    private readonly Linear outProj;
    private readonly Parameter gain;

    public FuzzNet() : base(nameof(FuzzNet))
    {
        inProj = nn.Linear(24, 40);
        outProj = nn.Linear(40, 8);
        gain = new Parameter(torch.ones(8));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => outProj.forward(inProj.forward(x)) * gain;
}

/// <summary>A model large enough (8.4M parameters, 34 MB) that a SIGKILL lands inside a save.</summary>
[EmaTracked]
public sealed partial class KillNet : nn.Module<Tensor, Tensor>
{
    private readonly Linear first;
    private readonly Linear second;

    public KillNet() : base(nameof(KillNet))
    {
        first = nn.Linear(2048, 2048);
        second = nn.Linear(2048, 2048);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => second.forward(first.forward(x));
}

using EmaGen;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MyTrainer;

/// <summary>
/// A small MLP. [EmaTracked] + partial is all EmaGen needs: the build emits a typed EMA shadow for it and a
/// reflection-free RegisterComponents(), which is what makes the model train in a NativeAOT binary too.
/// </summary>
[EmaTracked]
public sealed partial class TrainerModel : nn.Module<Tensor, Tensor>
{
    private readonly Linear input;
    private readonly Linear hidden;
    private readonly Linear output;
    private readonly SiLU act = nn.SiLU();

    public TrainerModel(int width = 64) : base(nameof(TrainerModel))
    {
        input = nn.Linear(1, width);
        hidden = nn.Linear(width, width);
        output = nn.Linear(width, 1);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var y = output.call(act.call(hidden.call(act.call(input.call(x)))));
        return y.MoveToOuterDisposeScope();
    }
}

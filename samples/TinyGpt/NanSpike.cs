using System;
using System.IO;
using System.Linq;
using TorchSharp;
using static TorchSharp.torch;

namespace EmaGen.Samples.TinyGpt;

/// <summary>
/// <c>--nan-spike STEP</c>: one bad step, as an fp16 overflow or a corrupt batch makes it. The loss of step STEP
/// overflows to infinity, so its gradients are non-finite and AdamW writes NaN into the raw weights; the EMA's
/// non-finite guard keeps every shadow element as it was, the step report says what happened, and the trainer recovers
/// the way a user would: copy the EMA weights into the model and restart the optimizer, whose moments hold NaN too.
/// </summary>
internal static class NanSpike
{
    /// <summary>The spiked loss: what a loss that overflowed in half precision is.</summary>
    public static Tensor Overflow(Tensor loss) => loss * float.PositiveInfinity;

    /// <summary>How many parameter tensors of <paramref name="model"/> hold a NaN or infinite element.</summary>
    public static int BrokenTensors(nn.Module model)
    {
        using var _ = torch.no_grad();
        return model.parameters().Count(p => !torch.isfinite(p).all().item<bool>());
    }

    /// <summary>After the spiked step's EMA update: the report, both sets of weights checked, and the recovery.</summary>
    public static optim.Optimizer Recover<TModel>(EmaManager<TModel> ema, TModel model, optim.Optimizer optimizer, Func<optim.Optimizer> restart, TextWriter log)
        where TModel : nn.Module<Tensor, Tensor>, IEmaTracked<TModel>
    {
        int tensors = model.parameters().Count();
        log.WriteLine($"step {ema.Step,5}  loss spike: the loss overflowed to infinity; raw weights broken: {BrokenTensors(model)} of {tensors} tensors hold NaN/Inf");
        // The report is one reused object; reading it allocates nothing, ToString() is the log line.
        log.WriteLine($"EMA step report: {ema.LastUpdate}");
        int finite = ema.TrackedNames.Count(n => torch.isfinite(ema[n]).all().item<bool>());
        log.WriteLine($"EMA weights intact: {finite} of {ema.Count} shadows finite (the guard kept every non-finite element's shadow as it was)");
        ema.CopyTo(model);
        optimizer.Dispose();
        log.WriteLine($"recovered: ema.CopyTo(model) and a fresh AdamW (its moments held NaN); raw weights broken now: {BrokenTensors(model)} of {tensors}");
        return restart();
    }
}

using System;
using System.IO;
using System.Threading.Tasks;
using EmaGen;
using TorchSharp;
using static TorchSharp.torch;

namespace MyTrainer;

/// <summary>
/// Fits y = sin(3x) from samples with heavy label noise, with AdamW at a high learning rate: the raw weights keep
/// jittering around the fit, their EMA settles. Prints both validation losses and keeps the EMA as a PyTorch
/// Distributed Checkpoint (checkpoints/ema) that torch.distributed.checkpoint loads.
/// </summary>
public static class Program
{
    public static async Task<int> Main(string[] args)
    {
        int steps = args.Length > 0 ? int.Parse(args[0]) : 1500;
        var checkpoint = Path.GetFullPath(args.Length > 1 ? args[1] : Path.Combine("checkpoints", "ema"));
        torch.manual_seed(7);

        using var model = new TrainerModel();
        using var optimizer = torch.optim.AdamW(model.parameters(), lr: 0.01);
        // EDM2's power-function profile (sigma_rel 0.10): averages the last ~10% of training, whatever its length.
        using var ema = new EmaManager<TrainerModel>(model, new EmaOptions { Schedule = EmaSchedule.PowerFunction(0.10) });

        using var validX = torch.linspace(-2, 2, 512).unsqueeze(1);
        using var validY = torch.sin(validX * 3);
        Task pendingSave = Task.CompletedTask;
        for (int step = 1; step <= steps; step++)
        {
            using var scope = torch.NewDisposeScope();
            var x = torch.rand(64, 1) * 4 - 2;
            var y = torch.sin(x * 3) + torch.randn_like(x) * 0.5;
            var loss = torch.nn.functional.mse_loss(model.call(x), y);
            optimizer.zero_grad();
            loss.backward();
            optimizer.step();
            ema.Update(model);                                   // ema = decay * ema + (1 - decay) * weights
            if (step % 500 == 0)
            {
                await pendingSave;                               // one background write at a time
                pendingSave = ema.SaveAsync(checkpoint);         // copies now, writes on a background task
            }
        }
        await pendingSave;
        ema.Save(checkpoint);

        double raw = Evaluate(model, validX, validY);
        double averaged;
        using (ema.SwapInto(model)) averaged = Evaluate(model, validX, validY);    // EMA weights in, restored after
        Console.WriteLine($"trained {steps} steps; {ema.Schedule.Describe()}");
        Console.WriteLine($"  raw weights  validation loss {raw:F5}");
        Console.WriteLine($"  EMA weights  validation loss {averaged:F5}");
        Console.WriteLine($"EMA checkpoint: {checkpoint}");
        return 0;
    }

    private static double Evaluate(TrainerModel model, Tensor x, Tensor y)
    {
        using var _ = torch.no_grad();
        using var prediction = model.call(x);
        using var loss = torch.nn.functional.mse_loss(prediction, y);
        return loss.item<float>();
    }
}

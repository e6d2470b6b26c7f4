using System;
using TorchSharp;

namespace EmaGen;

// The step: decays computed once, handed down as values; check, blend, advance.
public abstract partial class EmaManagerBase<TModel>
{
    private readonly StepPipeline _steps;
    private double[]? _stepDecays;
    private EmaWeightSwap? _activeSwap;

    /// <summary>
    /// Applies <c>ema = decay * ema + (1 - decay) * param</c> to every averaged tensor (this rank's box of it when
    /// sharded), in place, recording no gradients, for every profile whose schedule updates at this step, in one pass
    /// over the parameters. The model is first checked against the layout seen at construction; a mismatch throws before
    /// any shadow is written. On the CPU a steady-state update allocates no managed memory and creates no tensors.
    /// </summary>
    public void Update(TModel model)
    {
        ArgumentNullException.ThrowIfNull(model);
        ThrowIfDisposed();
        ThrowIfSwapped();
        long step = Step + 1;
        var decays = _stepDecays ??= new double[_profiles.Length];
        bool any = false;
        for (int k = 0; k < _profiles.Length; k++)
        {
            var schedule = _profiles[k].Schedule;
            decays[k] = schedule.UpdatesAt(step) ? schedule.DecayAt(step) : double.NaN;
            any |= !double.IsNaN(decays[k]);
        }
        if (any)
        {
            _steps.Run(model, decays);
            for (int k = 0; k < decays.Length; k++)
            {
                if (!double.IsNaN(decays[k])) _currentDecay[k] = decays[k];
            }
        }
        Step = step;
    }

    /// <summary>Threads a CPU update uses (1 for small models or shards).</summary>
    public int UpdateThreads => _steps.Threads;

    /// <summary>
    /// How updates run, for a user checking that the fast path is taken: how many (device, dtype) groups are packed
    /// into one flat buffer and still intact at the last update, how many tensors went one by one, and why a group is
    /// not packed or fell back (see <see cref="EmaOptions.PackParameters"/>).
    /// </summary>
    public string UpdatePath => _steps.Describe();

    // Each averaged tensor of `model` (checked against the layout) with profile `profile`'s shadow, for copies and swaps.
    private protected (torch.Tensor Target, torch.Tensor Shadow)[] ShadowPairs(TModel model, int profile)
    {
        ArgumentNullException.ThrowIfNull(model);
        ThrowIfDisposed();
        ThrowIfSwapped();
        var live = _steps.LiveTensors(model);
        var pairs = new (torch.Tensor, torch.Tensor)[live.Length];
        for (int i = 0; i < live.Length; i++) pairs[i] = (live[i], _arenas[profile][i]!);
        return pairs;
    }

    // While a swap is active the shadow storage holds the model's own weights: updates, saves and loads wait for its end.
    private protected EmaWeightSwap BeginSwap(TModel model, int profile)
    {
        var swap = new EmaWeightSwap(ShadowPairs(model, profile), () => _activeSwap = null);
        _activeSwap = swap;
        return swap;
    }

    private protected void ThrowIfSwapped()
    {
        if (_activeSwap is not null)
        {
            throw new InvalidOperationException("The EMA weights are swapped into a model; dispose the swap before updating, saving or loading.");
        }
    }
}

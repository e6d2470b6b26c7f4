using System;
using TorchSharp;
using static TorchSharp.torch;

namespace EmaGen.Samples.Denoiser;

/// <summary>DDPM (Ho et al. 2020) with a linear noise schedule: noising for training, ancestral sampling.</summary>
public sealed class Diffusion : IDisposable
{
    private readonly double[] _beta;
    private readonly double[] _alphaBar;
    private readonly Tensor _sqrtAlphaBar;
    private readonly Tensor _sqrtOneMinusAlphaBar;

    public Diffusion(int steps = 100)
    {
        Steps = steps;
        _beta = new double[steps];
        _alphaBar = new double[steps];
        // Ho et al.'s linear betas (1e-4 to 0.02 over 1000 steps), rescaled so the same total noise fits in fewer steps.
        double scale = 1000.0 / steps;
        double product = 1.0;
        for (int i = 0; i < steps; i++)
        {
            _beta[i] = scale * (1e-4 + (0.02 - 1e-4) * i / (steps - 1));
            product *= 1 - _beta[i];
            _alphaBar[i] = product;
        }
        _sqrtAlphaBar = torch.tensor(Array.ConvertAll(_alphaBar, a => (float)Math.Sqrt(a)));
        _sqrtOneMinusAlphaBar = torch.tensor(Array.ConvertAll(_alphaBar, a => (float)Math.Sqrt(1 - a)));
    }

    public int Steps { get; }

    /// <summary>x_t = sqrt(ᾱ_t)·x_0 + sqrt(1-ᾱ_t)·ε for each row's step t.</summary>
    public Tensor Noise(Tensor x0, Tensor t, Tensor eps) =>
        _sqrtAlphaBar[t].unsqueeze(1) * x0 + _sqrtOneMinusAlphaBar[t].unsqueeze(1) * eps;

    /// <summary>
    /// Ancestral sampling from x_T = <paramref name="noise"/>[Steps] with per-step noise <paramref name="noise"/>[t],
    /// so two models sampled with the same tensor see exactly the same randomness.
    /// </summary>
    public Tensor Sample(DenoiserModel model, Tensor noise)
    {
        using var _ = torch.no_grad();
        long n = noise.shape[1];
        var x = noise[Steps].clone();
        for (int t = Steps - 1; t >= 0; t--)
        {
            using var scope = torch.NewDisposeScope();
            var tt = torch.full(n, t, ScalarType.Int64);
            var eps = model.call(x, tt);
            double alpha = 1 - _beta[t];
            var mean = (x - eps * (_beta[t] / Math.Sqrt(1 - _alphaBar[t]))) / Math.Sqrt(alpha);
            Tensor next = t > 0 ? mean + noise[t] * Math.Sqrt(_beta[t] * (1 - _alphaBar[t - 1]) / (1 - _alphaBar[t])) : mean;
            x.Dispose();
            x = next.MoveToOuterDisposeScope();
        }
        return x;
    }

    public void Dispose()
    {
        _sqrtAlphaBar.Dispose();
        _sqrtOneMinusAlphaBar.Dispose();
    }
}

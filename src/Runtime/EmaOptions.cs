using System;

namespace EmaGen;

/// <summary>Settings of an <see cref="EmaManager{TModel}"/>.</summary>
public sealed class EmaOptions
{
    /// <summary>Default decay, as in the NeMo Automodel <c>EMAManager</c> EmaGen grew from.</summary>
    public const double DefaultDecay = 0.9999;

    /// <summary>
    /// Weight of the old average in <c>ema = decay * ema + (1 - decay) * param</c>; must lie in [0, 1].
    /// 0 copies the parameters on every update, 1 never moves the shadow.
    /// </summary>
    public double Decay { get; init; } = DefaultDecay;

    internal void Validate()
    {
        if (!(Decay >= 0.0 && Decay <= 1.0))
        {
            throw new ArgumentOutOfRangeException(nameof(Decay), Decay, "EMA decay must lie in [0, 1].");
        }
    }
}

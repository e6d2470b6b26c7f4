namespace EmaGen.Tests.Support;

/// <summary>
/// The expected update of one fp32 element, stated independently of the kernels: <c>ema + w·(p − ema)</c> with
/// w = 1 − decay rounded to fp32, taken from the parameter's side (<c>p − (p − ema)·(1 − w)</c>) when w ≥ 1/2, as
/// LibTorch's <c>lerp</c> does, so decay 1 keeps the shadow and decay 0 gives the parameter exactly.
/// </summary>
internal static class Lerp
{
    public static float Of(float ema, float p, double decay)
    {
        float w = (float)(1.0 - decay);
        return w < 0.5f ? ema + (p - ema) * w : p - (p - ema) * (1f - w);
    }
}

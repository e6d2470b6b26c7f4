namespace EmaGen.Tests.Support;

/// <summary>
/// The expected update of one fp32 element, stated independently of the kernels: <c>ema − (ema − p)·w</c> (the value
/// of <c>ema + w·(p − ema)</c>, keeping −0.0) with w = 1 − decay rounded to fp32, and decay 0 the parameter itself.
/// </summary>
internal static class Lerp
{
    public static float Of(float ema, float p, double decay)
    {
        if (decay == 0) return p;
        float w = (float)(1.0 - decay);
        return ema - (ema - p) * w;
    }
}

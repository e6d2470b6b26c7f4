using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using System.Text;

namespace EmaGen.Samples.TinyGpt;

/// <summary>One evaluation: the held-out loss of the raw and of the EMA weights after <see cref="Step"/> (NaN: broken weights).</summary>
public sealed record EvalPoint(int Step, double Raw, double Ema);

/// <summary>
/// A small hand-written SVG line chart of the evaluation figure over steps, raw against EMA, with the spike marked:
/// what a user looks at instead of reading the log. No plotting dependency: the sample's point is the EMA.
/// </summary>
public static class SvgPlot
{
    private const double Width = 640, Height = 360, Left = 60, Right = 20, Top = 30, Bottom = 45;

    public static string Render(IReadOnlyList<EvalPoint> points, int? spikeStep, string title)
    {
        var finite = points.SelectMany(p => new[] { p.Raw, p.Ema }).Where(double.IsFinite).ToList();
        double lo = finite.Count > 0 ? finite.Min() : 0, hi = finite.Count > 0 ? finite.Max() : 1;
        if (hi - lo < 1e-9) (lo, hi) = (lo - 0.5, hi + 0.5);
        double pad = 0.05 * (hi - lo);
        (lo, hi) = (lo - pad, hi + pad);
        int first = points.Count > 0 ? points.Min(p => p.Step) : 0, last = points.Count > 0 ? points.Max(p => p.Step) : 1;
        if (last == first) last = first + 1;
        double X(double step) => Left + (step - first) / (last - first) * (Width - Left - Right);
        double Y(double value) => Top + (hi - value) / (hi - lo) * (Height - Top - Bottom);
        string N(double v) => v.ToString("0.#", CultureInfo.InvariantCulture);

        var svg = new StringBuilder();
        svg.Append(CultureInfo.InvariantCulture, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{N(Width)}\" height=\"{N(Height)}\" viewBox=\"0 0 {N(Width)} {N(Height)}\" font-family=\"sans-serif\" font-size=\"12\">\n");
        svg.Append(CultureInfo.InvariantCulture, $"<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{N(Left)}\" y=\"18\" font-size=\"14\">{Escape(title)}</text>\n");
        // Axes with five ticks each.
        svg.Append(CultureInfo.InvariantCulture, $"<path d=\"M{N(Left)},{N(Top)} V{N(Height - Bottom)} H{N(Width - Right)}\" stroke=\"black\" fill=\"none\"/>\n");
        for (int i = 0; i <= 4; i++)
        {
            double v = lo + i * (hi - lo) / 4, s = first + i * (last - first) / 4.0;
            svg.Append(CultureInfo.InvariantCulture, $"<line x1=\"{N(Left)}\" x2=\"{N(Width - Right)}\" y1=\"{N(Y(v))}\" y2=\"{N(Y(v))}\" stroke=\"#ddd\"/><text x=\"{N(Left - 6)}\" y=\"{N(Y(v) + 4)}\" text-anchor=\"end\">{v.ToString("0.00", CultureInfo.InvariantCulture)}</text>\n");
            svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{N(X(s))}\" y=\"{N(Height - Bottom + 16)}\" text-anchor=\"middle\">{N(Math.Round(s))}</text>\n");
        }
        svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{N((Left + Width - Right) / 2)}\" y=\"{N(Height - 8)}\" text-anchor=\"middle\">step</text>\n");
        svg.Append(CultureInfo.InvariantCulture, $"<text transform=\"translate(14,{N((Top + Height - Bottom) / 2)}) rotate(-90)\" text-anchor=\"middle\">held-out loss (nats/token)</text>\n");
        if (spikeStep is { } spike)
        {
            svg.Append(CultureInfo.InvariantCulture, $"<line class=\"spike\" x1=\"{N(X(spike))}\" x2=\"{N(X(spike))}\" y1=\"{N(Top)}\" y2=\"{N(Height - Bottom)}\" stroke=\"crimson\" stroke-dasharray=\"5,4\"/>");
            svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{N(X(spike) + 4)}\" y=\"{N(Height - Bottom - 6)}\" fill=\"crimson\">NaN spike at step {spike}</text>\n");
        }
        Series(svg, points, p => p.Raw, "raw", "darkorange", X, Y, N);
        Series(svg, points, p => p.Ema, "ema", "steelblue", X, Y, N);
        // Legend.
        double lx = Width - Right - 150;
        svg.Append(CultureInfo.InvariantCulture, $"<line x1=\"{N(lx)}\" x2=\"{N(lx + 20)}\" y1=\"{N(Top + 30)}\" y2=\"{N(Top + 30)}\" stroke=\"darkorange\" stroke-width=\"2\"/><text x=\"{N(lx + 26)}\" y=\"{N(Top + 34)}\">raw weights</text>\n");
        svg.Append(CultureInfo.InvariantCulture, $"<line x1=\"{N(lx)}\" x2=\"{N(lx + 20)}\" y1=\"{N(Top + 48)}\" y2=\"{N(Top + 48)}\" stroke=\"steelblue\" stroke-width=\"2\"/><text x=\"{N(lx + 26)}\" y=\"{N(Top + 52)}\">EMA weights</text>\n");
        svg.Append("</svg>\n");
        return svg.ToString();
    }

    // One line per run of finite values; a non-finite value is a cross at the top edge ("NaN": off the chart).
    private static void Series(StringBuilder svg, IReadOnlyList<EvalPoint> points, Func<EvalPoint, double> value, string name, string color,
        Func<double, double> x, Func<double, double> y, Func<double, string> n)
    {
        var run = new List<string>();
        void Flush()
        {
            if (run.Count > 0) svg.Append(CultureInfo.InvariantCulture, $"<polyline class=\"{name}\" points=\"{string.Join(' ', run)}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>\n");
            run.Clear();
        }
        foreach (var p in points)
        {
            double v = value(p);
            if (double.IsFinite(v))
            {
                run.Add($"{n(x(p.Step))},{n(y(v))}");
                continue;
            }
            Flush();
            double cx = x(p.Step), cy = Top + 4;
            svg.Append(CultureInfo.InvariantCulture, $"<path class=\"{name}-nonfinite\" d=\"M{n(cx - 4)},{n(cy - 4)} L{n(cx + 4)},{n(cy + 4)} M{n(cx - 4)},{n(cy + 4)} L{n(cx + 4)},{n(cy - 4)}\" stroke=\"{color}\" stroke-width=\"2\"/><text x=\"{n(cx + 6)}\" y=\"{n(cy + 16)}\" fill=\"{color}\">{name}: {(double.IsNaN(v) ? "NaN" : "Inf")}</text>\n");
        }
        Flush();
    }

    private static string Escape(string text) => text.Replace("&", "&amp;", StringComparison.Ordinal).Replace("<", "&lt;", StringComparison.Ordinal).Replace(">", "&gt;", StringComparison.Ordinal);
}

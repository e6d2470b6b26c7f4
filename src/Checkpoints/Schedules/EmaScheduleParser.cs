using System;
using System.Collections.Generic;
using System.Globalization;

namespace EmaGen;

/// <summary>
/// Parses schedule specifications for command lines: <c>constant:0.999</c>, <c>warmup[:invGamma=1,power=0.75,min=0,max=0.9999,after=0]</c>,
/// <c>halflife:500[,ramp=0.05]</c>, <c>power:0.10</c> (σ_rel) or <c>power:gamma=6.94</c>,
/// <c>bema[:kappa=0.5,eta=0.2,rho=10,gamma=1,betamin=0]</c>, and the wrappers
/// <c>startafter:N:INNER</c> and <c>every:K[:percall]:INNER</c>.
/// </summary>
public static class EmaScheduleParser
{
    public static EmaSchedule Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var colon = text.IndexOf(':');
        var kind = (colon < 0 ? text : text[..colon]).Trim().ToLowerInvariant();
        var rest = colon < 0 ? "" : text[(colon + 1)..];
        try
        {
            switch (kind)
            {
                case "constant":
                    return EmaSchedule.Constant(Number(rest, "constant:DECAY"));
                case "warmup":
                    {
                        var a = Named(rest);
                        return EmaSchedule.Warmup(
                            a.GetValueOrDefault("invgamma", 1.0), a.GetValueOrDefault("power", 2.0 / 3.0),
                            a.GetValueOrDefault("min", 0.0), a.GetValueOrDefault("max", 0.9999), (long)a.GetValueOrDefault("after", 0.0));
                    }
                case "halflife":
                    {
                        var parts = rest.Split(',', 2);
                        var a = Named(parts.Length > 1 ? parts[1] : "");
                        return EmaSchedule.HalfLife(Number(parts[0], "halflife:STEPS"), a.TryGetValue("ramp", out var r) ? r : null);
                    }
                case "power":
                    {
                        var a = rest.Contains('=') ? Named(rest) : new Dictionary<string, double> { ["sigma"] = Number(rest, "power:SIGMA_REL") };
                        return a.TryGetValue("gamma", out var g) ? new PowerFunctionSchedule(g) : EmaSchedule.PowerFunction(a["sigma"]);
                    }
                case "bema":
                    {
                        var a = Named(rest);
                        foreach (var name in a.Keys)
                        {
                            if (name is not ("kappa" or "eta" or "rho" or "gamma" or "betamin")) throw new FormatException($"bema takes kappa, eta, rho, gamma, betamin, not '{name}'");
                        }
                        return EmaSchedule.Bema(
                            a.GetValueOrDefault("kappa", 0.5), a.GetValueOrDefault("eta", 0.2), a.GetValueOrDefault("rho", 10.0),
                            a.GetValueOrDefault("gamma", 1.0), a.GetValueOrDefault("betamin", 0.0));
                    }
                case "startafter":
                    {
                        var parts = rest.Split(':', 2);
                        if (parts.Length < 2) throw new FormatException("startafter:N:SCHEDULE");
                        return new StartAfterSchedule(Parse(parts[1]), long.Parse(parts[0], CultureInfo.InvariantCulture));
                    }
                case "every":
                    {
                        var parts = rest.Split(':', 3);
                        if (parts.Length < 2) throw new FormatException("every:K[:percall]:SCHEDULE");
                        bool perCall = parts.Length == 3 && parts[1].Equals("percall", StringComparison.OrdinalIgnoreCase);
                        var inner = perCall ? parts[2] : string.Join(':', parts[1..]);
                        return new UpdateEverySchedule(Parse(inner), int.Parse(parts[0], CultureInfo.InvariantCulture), perCall);
                    }
                default:
                    throw new FormatException("unknown schedule kind");
            }
        }
        catch (Exception e) when (e is FormatException or KeyNotFoundException or OverflowException)
        {
            throw new ArgumentException(
                $"Cannot read the schedule '{text}' ({e.Message}). Expected constant:D, warmup[:invGamma=..,power=..,min=..,max=..,after=..], halflife:H[,ramp=R], power:SIGMA_REL or power:gamma=G, bema[:kappa=..,eta=..,rho=..,gamma=..,betamin=..], startafter:N:S, every:K[:percall]:S.", nameof(text), e);
        }
    }

    private static double Number(string text, string form) =>
        double.TryParse(text.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out var v) ? v : throw new FormatException($"expected {form}");

    private static Dictionary<string, double> Named(string text)
    {
        var result = new Dictionary<string, double>(StringComparer.OrdinalIgnoreCase);
        foreach (var pair in text.Split(',', StringSplitOptions.RemoveEmptyEntries))
        {
            var kv = pair.Split('=', 2);
            if (kv.Length != 2) throw new FormatException($"'{pair}' is not name=value");
            result[kv[0].Trim().ToLowerInvariant()] = Number(kv[1], kv[0] + "=NUMBER");
        }
        return result;
    }
}

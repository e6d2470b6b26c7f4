using System;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Text;
using System.Text.Json;

namespace EmaGen.Cli;

/// <summary>
/// <c>emagen schedule</c>: the decay a schedule applies at chosen steps and its averaging horizon there, so a schedule
/// can be planned before training. The schedule comes either as a specification (<c>power:0.10</c>) or as options
/// (<c>--kind power --sigma-rel 0.1</c>); <c>--every K</c> and <c>--start-after N</c> wrap it either way.
/// </summary>
internal static class ScheduleCommand
{
    private const string DefaultSteps = "1,2,10,100,1000,10000,100000";

    public static int Run(string? spec, ScheduleKindOptions kind, int? every, bool perCall, long? startAfter, string? steps, bool json, TextWriter stdout)
    {
        if ((spec is null) == (kind.Kind is null))
        {
            throw new ArgumentException("Give a schedule either as SPEC (e.g. power:0.10) or with --kind (constant, warmup, halflife, power), not both.");
        }
        var schedule = spec is not null ? EmaScheduleParser.Parse(spec) : kind.Build();
        if (startAfter is { } n) schedule = EmaSchedule.StartAfter(n, schedule);
        if (every is { } k) schedule = EmaSchedule.UpdateEvery(k, schedule, perCall);
        else if (perCall) throw new ArgumentException("--per-call only applies with --every K.");

        var at = (steps ?? DefaultSteps)
            .Split(',', StringSplitOptions.RemoveEmptyEntries)
            .Select(s => long.TryParse(s.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) && v >= 1
                ? v : throw new ArgumentException($"--steps: '{s}' is not a step (integers from 1)."))
            .ToArray();
        var power = PowerOf(schedule);
        if (json) WriteJson(schedule, power, at, stdout);
        else WriteText(schedule, power, at, stdout);
        return 0;
    }

    private static void WriteText(EmaSchedule schedule, PowerFunctionSchedule? power, long[] at, TextWriter stdout)
    {
        stdout.WriteLine(schedule.Describe());
        if (power is not null) stdout.WriteLine($"  gamma {power.Gamma:F4}, sigma_rel {power.SigmaRel:F4}");
        bool bema = schedule.IsBiasCorrected;
        stdout.WriteLine("        step  update  decay                   1-decay       half-life (steps)" + (bema ? "  alpha" : ""));
        foreach (var step in at)
        {
            bool updates = schedule.UpdatesAt(step);
            double d = schedule.DecayAt(step);
            stdout.WriteLine(
                $"  {step,10}  {(updates ? "yes" : "no "),-6}  {Number(d),-22}  {(1 - d).ToString("G6", CultureInfo.InvariantCulture),-12}  {HalfLifeText(schedule.HalfLifeAt(step)),-17}"
                + (bema ? $"  {schedule.AlphaAt(step).ToString("G6", CultureInfo.InvariantCulture)}" : ""));
        }
    }

    private static void WriteJson(EmaSchedule schedule, PowerFunctionSchedule? power, long[] at, TextWriter stdout)
    {
        var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("schedule", schedule.Describe());
            if (power is not null)
            {
                w.WriteNumber("gamma", power.Gamma);
                w.WriteNumber("sigma_rel", power.SigmaRel);
            }
            w.WriteStartArray("steps");
            foreach (var step in at)
            {
                double d = schedule.DecayAt(step);
                double halfLife = schedule.HalfLifeAt(step);
                w.WriteStartObject();
                w.WriteNumber("step", step);
                w.WriteBoolean("updates", schedule.UpdatesAt(step));
                w.WriteNumber("decay", d);
                w.WriteNumber("one_minus_decay", 1 - d);
                if (schedule.IsBiasCorrected) w.WriteNumber("alpha", schedule.AlphaAt(step));
                if (double.IsFinite(halfLife)) w.WriteNumber("half_life_steps", halfLife);
                else w.WriteNull("half_life_steps");
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        stdout.WriteLine(Encoding.UTF8.GetString(buffer.ToArray()));
    }

    private static PowerFunctionSchedule? PowerOf(EmaSchedule schedule) => schedule switch
    {
        PowerFunctionSchedule p => p,
        UpdateEverySchedule u => PowerOf(u.Inner),
        StartAfterSchedule s => PowerOf(s.Inner),
        _ => null,
    };

    private static string Number(double value) => value.ToString("R", CultureInfo.InvariantCulture);

    private static string HalfLifeText(double steps) => double.IsPositiveInfinity(steps) ? "never" : steps.ToString("G6", CultureInfo.InvariantCulture);
}

/// <summary>The <c>--kind</c> form of a schedule: the kind and the numbers it takes.</summary>
internal sealed record ScheduleKindOptions(
    string? Kind, double? Decay, double? SigmaRel, double? Gamma, double? InvGamma, double? Power, double? Min, double? Max,
    long? UpdateAfter, double? HalfLife, double? RampUp)
{
    public EmaSchedule Build() => Kind!.ToLowerInvariant() switch
    {
        "constant" => EmaSchedule.Constant(Decay ?? throw Missing("--decay", "constant")),
        "warmup" => EmaSchedule.Warmup(InvGamma ?? 1.0, Power ?? 2.0 / 3.0, Min ?? 0.0, Max ?? 0.9999, UpdateAfter ?? 0),
        "halflife" => EmaSchedule.HalfLife(HalfLife ?? throw Missing("--half-life", "halflife"), RampUp),
        "power" => (SigmaRel, Gamma) switch
        {
            ({ } s, null) => EmaSchedule.PowerFunction(s),
            (null, { } g) => new PowerFunctionSchedule(g),
            _ => throw new ArgumentException("--kind power takes exactly one of --sigma-rel and --gamma."),
        },
        var other => throw new ArgumentException($"--kind '{other}' is not one of constant, warmup, halflife, power."),
    };

    private static ArgumentException Missing(string option, string kind) => new($"--kind {kind} needs {option}.");
}

using System;
using System.Globalization;
using System.IO;
using System.Linq;

namespace EmaGen.Cli;

/// <summary><c>emagen schedule SPEC [--steps 1,10,100]</c>: the decay a schedule applies at chosen steps, and its averaging horizon.</summary>
internal static class ScheduleCommand
{
    public static int Run(string spec, string? steps, TextWriter stdout)
    {
        var schedule = EmaScheduleParser.Parse(spec);
        var at = (steps ?? "1,2,10,100,1000,10000,100000")
            .Split(',', StringSplitOptions.RemoveEmptyEntries)
            .Select(s => long.Parse(s.Trim(), CultureInfo.InvariantCulture))
            .ToArray();
        stdout.WriteLine(schedule.Describe());
        if (schedule is PowerFunctionSchedule p)
        {
            stdout.WriteLine($"  gamma {p.Gamma:F4}, sigma_rel {p.SigmaRel:F4}");
        }
        stdout.WriteLine("        step  update  decay                   1-decay");
        foreach (var step in at)
        {
            if (step < 1) throw new ArgumentException("steps start at 1");
            bool updates = schedule.UpdatesAt(step);
            double d = schedule.DecayAt(step);
            stdout.WriteLine($"  {step,10}  {(updates ? "yes" : "no "),-6}  {d.ToString("R", CultureInfo.InvariantCulture),-22}  {(1 - d).ToString("G6", CultureInfo.InvariantCulture)}");
        }
        return 0;
    }
}

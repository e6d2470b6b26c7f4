using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;

namespace EmaGen.Samples.Denoiser;

/// <summary>
/// <c>--world-size N</c> on one machine, as torchrun would: starts N copies of this program with RANK, WORLD_SIZE and
/// LOCAL_RANK set, lets them share the console (only rank 0 prints progress), and waits for all of them.
/// </summary>
public static class Launcher
{
    public static int Run(string[] args, int worldSize)
    {
        var (file, prefix) = SelfCommand();
        var processes = new List<Process>();
        for (int rank = 0; rank < worldSize; rank++)
        {
            var start = new ProcessStartInfo(file) { UseShellExecute = false };
            foreach (var a in prefix) start.ArgumentList.Add(a);
            foreach (var a in args) start.ArgumentList.Add(a);
            start.Environment["RANK"] = rank.ToString(System.Globalization.CultureInfo.InvariantCulture);
            start.Environment["LOCAL_RANK"] = start.Environment["RANK"];
            start.Environment["WORLD_SIZE"] = worldSize.ToString(System.Globalization.CultureInfo.InvariantCulture);
            processes.Add(Process.Start(start)!);
        }
        int exitCode = 0;
        for (int rank = 0; rank < processes.Count; rank++)
        {
            processes[rank].WaitForExit();
            if (processes[rank].ExitCode != 0)
            {
                Console.Error.WriteLine($"rank {rank} exited with code {processes[rank].ExitCode}");
                exitCode = exitCode == 0 ? processes[rank].ExitCode : exitCode;
            }
            processes[rank].Dispose();
        }
        return exitCode;
    }

    // This program again: the apphost or NativeAOT binary itself, or `dotnet Denoiser.dll` under the shared host.
    private static (string File, string[] Prefix) SelfCommand()
    {
        var process = Environment.ProcessPath ?? throw new InvalidOperationException("cannot find this program's path");
        if (Path.GetFileNameWithoutExtension(process) == "dotnet")
        {
            return (process, new[] { Path.Combine(AppContext.BaseDirectory, "Denoiser.dll") });
        }
        return (process, Array.Empty<string>());
    }
}

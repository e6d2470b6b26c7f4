using System;
using System.Diagnostics;
using System.IO;
using Xunit;

namespace EmaGen.Tests.Support;

/// <summary>
/// Runs the interop scripts with Debian's PyTorch (<c>/usr/bin/python3</c> with <c>python3-torch</c>). There is no skip:
/// without it the interop tests fail and say how to install it (.ci/run installs it with apt).
/// </summary>
internal static class PythonTorch
{
    public const string Python = "/usr/bin/python3";

    public static string Run(string script, params string[] arguments)
    {
        if (!File.Exists(Python))
        {
            Assert.Fail($"{Python} is missing: install Debian's PyTorch with 'apt-get update && apt-get install -y python3-torch' (.ci/run does this).");
        }
        var start = new ProcessStartInfo(Python)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add(TestPaths.InteropScript(script));
        foreach (var a in arguments) start.ArgumentList.Add(a);
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(120_000))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"{script} did not finish in 2 minutes.");
        }
        var output = stdout.Result + stderr.Result;
        if (output.Contains("No module named 'torch'", StringComparison.Ordinal))
        {
            Assert.Fail($"{Python} has no torch module: install it with 'apt-get update && apt-get install -y python3-torch' (.ci/run does this).");
        }
        Assert.True(process.ExitCode == 0, $"{script} failed (exit {process.ExitCode}):\n{output}");
        return output;
    }
}

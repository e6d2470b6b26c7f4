using System;
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
        var scriptAndArguments = new string[arguments.Length + 1];
        scriptAndArguments[0] = TestPaths.InteropScript(script);
        arguments.CopyTo(scriptAndArguments, 1);
        var (exitCode, output) = ProcessRunner.Run(Python, null, 120_000, scriptAndArguments);
        if (output.Contains("No module named 'torch'", StringComparison.Ordinal))
        {
            Assert.Fail($"{Python} has no torch module: install it with 'apt-get update && apt-get install -y python3-torch' (.ci/run does this).");
        }
        Assert.True(exitCode == 0, $"{script} failed (exit {exitCode}):\n{output}");
        return output;
    }
}

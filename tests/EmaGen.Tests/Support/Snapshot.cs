using System;
using System.IO;
using System.Runtime.CompilerServices;
using Xunit;

namespace EmaGen.Tests.Support;

/// <summary>
/// Checked-in snapshot files (Verify.Xunit does not restore here). A mismatch writes <c>NAME.received.cs</c> beside the
/// snapshot and fails; <c>EMAGEN_UPDATE_SNAPSHOTS=1</c> rewrites the snapshots instead.
/// </summary>
internal static class Snapshot
{
    public static void Match(string actual, string name, [CallerFilePath] string callerFile = "")
    {
        var dir = Path.Combine(Path.GetDirectoryName(callerFile)!, "Snapshots");
        var verified = Path.Combine(dir, name + ".verified.cs");
        var received = Path.Combine(dir, name + ".received.cs");
        actual = Normalize(actual);
        Directory.CreateDirectory(dir);
        if (Environment.GetEnvironmentVariable("EMAGEN_UPDATE_SNAPSHOTS") == "1")
        {
            File.WriteAllText(verified, actual);
            if (File.Exists(received)) File.Delete(received);
            return;
        }
        if (!File.Exists(verified))
        {
            File.WriteAllText(received, actual);
            Assert.Fail($"No snapshot {verified}; wrote {received}. Review it and rename, or run with EMAGEN_UPDATE_SNAPSHOTS=1.");
        }
        var expected = Normalize(File.ReadAllText(verified));
        if (expected != actual)
        {
            File.WriteAllText(received, actual);
            Assert.Equal(expected, actual);
        }
        else if (File.Exists(received))
        {
            File.Delete(received);
        }
    }

    private static string Normalize(string text) => text.Replace("\r\n", "\n").TrimStart('\uFEFF');
}

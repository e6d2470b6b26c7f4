using System;
using System.IO;
using System.Runtime.CompilerServices;

namespace EmaGen.Tests.Support;

/// <summary>Paths inside the repository (fixtures, interop scripts) and throw-away folders for tests.</summary>
internal static class TestPaths
{
    public static string TestsRoot([CallerFilePath] string file = "") => Path.GetFullPath(Path.Combine(Path.GetDirectoryName(file)!, ".."));

    public static string Fixture(string relative) => Path.Combine(TestsRoot(), "Fixtures", relative);

    public static string InteropScript(string name) => Path.GetFullPath(Path.Combine(TestsRoot(), "..", "interop", name));

    /// <summary>A fresh folder under the temp directory, deleted when disposed.</summary>
    public static TempFolder NewTempFolder() => new();

    public sealed class TempFolder : IDisposable
    {
        public TempFolder()
        {
            Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "emagen-test-" + Guid.NewGuid().ToString("N")[..12]);
            Directory.CreateDirectory(Path);
        }

        public string Path { get; }

        public string this[string name] => System.IO.Path.Combine(Path, name);

        public void Dispose()
        {
            if (Directory.Exists(Path)) Directory.Delete(Path, recursive: true);
        }
    }
}

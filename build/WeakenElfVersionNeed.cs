// Compiled by RoslynCodeTaskFactory (netstandard2.0) from build/TorchSharpNativeFix.targets.
using System;
using System.IO;
using System.Text;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

public sealed class EmaGenWeakenElfVersionNeed : Task
{
    private const uint ShtGnuVerneed = 0x6ffffffe;
    private const ushort VerFlagWeak = 0x2;

    [Required] public ITaskItem[] Files { get; set; } = Array.Empty<ITaskItem>();
    [Required] public string Version { get; set; } = "";

    /// <summary>Patch even when this host has the version: for output that travels to other machines (a tool package).</summary>
    public bool Always { get; set; }

    public override bool Execute()
    {
        if (!Always && HostProvides(Version))
        {
            Log.LogMessage(MessageImportance.Low, "Host libstdc++ provides " + Version + "; nothing to patch.");
            return true;
        }
        foreach (var item in Files)
        {
            var path = item.ItemSpec;
            if (!File.Exists(path)) continue;
            try
            {
                Patch(path);
            }
            catch (Exception e) when (e is IOException || e is InvalidDataException || e is UnauthorizedAccessException)
            {
                Log.LogError("Could not mark " + Version + " weak in " + path + ": " + e.Message);
            }
        }
        return !Log.HasLoggedErrors;
    }

    // The version names a libstdc++ defines sit in its .dynstr as plain NUL-terminated strings.
    private static bool HostProvides(string version)
    {
        string[] candidates =
        {
            "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/lib/x86_64-linux-gnu/libstdc++.so.6",
            "/usr/lib/aarch64-linux-gnu/libstdc++.so.6", "/usr/lib64/libstdc++.so.6", "/usr/lib/libstdc++.so.6",
        };
        var needle = Encoding.ASCII.GetBytes(version + "\0");
        foreach (var candidate in candidates)
        {
            if (!File.Exists(candidate)) continue;
            return IndexOf(File.ReadAllBytes(candidate), needle) >= 0;
        }
        return false;
    }

    private static int IndexOf(byte[] haystack, byte[] needle)
    {
        for (int i = 0; i <= haystack.Length - needle.Length; i++)
        {
            int k = 0;
            while (k < needle.Length && haystack[i + k] == needle[k]) k++;
            if (k == needle.Length) return i;
        }
        return -1;
    }

    private void Patch(string path)
    {
        var d = File.ReadAllBytes(path);
        if (d.Length < 64 || d[0] != 0x7f || d[1] != (byte)'E' || d[2] != (byte)'L' || d[3] != (byte)'F' || d[4] != 2 || d[5] != 1)
        {
            throw new InvalidDataException("not an ELF64 little-endian file");
        }
        long shoff = (long)U64(d, 0x28);
        int shentsize = U16(d, 0x3A), shnum = U16(d, 0x3C), changed = 0;
        for (int i = 0; i < shnum; i++)
        {
            long sh = shoff + (long)i * shentsize;
            Check(d, sh, 0x40);
            if (U32(d, sh + 4) != ShtGnuVerneed) continue;
            long p = (long)U64(d, sh + 0x18);
            int link = (int)U32(d, sh + 0x28);
            int count = (int)U32(d, sh + 0x2C);
            long linked = shoff + (long)link * shentsize;
            Check(d, linked, 0x40);
            long strOff = (long)U64(d, linked + 0x18);
            for (int n = 0; n < count; n++)
            {
                Check(d, p, 16);
                int auxCount = U16(d, p + 2);
                long a = p + U32(d, p + 8);
                for (int k = 0; k < auxCount; k++)
                {
                    Check(d, a, 16);
                    long nameAt = strOff + U32(d, a + 8);
                    Check(d, nameAt, 1);
                    int end = Array.IndexOf(d, (byte)0, (int)nameAt);
                    if (end < 0) throw new InvalidDataException("unterminated version name");
                    var name = Encoding.ASCII.GetString(d, (int)nameAt, end - (int)nameAt);
                    int flags = U16(d, a + 4);
                    if (name == Version && (flags & VerFlagWeak) == 0)
                    {
                        flags |= VerFlagWeak;
                        d[a + 4] = (byte)flags;
                        d[a + 5] = (byte)(flags >> 8);
                        changed++;
                    }
                    uint nextAux = U32(d, a + 12);
                    if (nextAux == 0) break;
                    a += nextAux;
                }
                uint next = U32(d, p + 12);
                if (next == 0) break;
                p += next;
            }
        }
        if (changed == 0) return;
        var stamp = File.GetLastWriteTimeUtc(path);
        var tmp = path + ".emagen-" + Guid.NewGuid().ToString("N");
        File.WriteAllBytes(tmp, d);
        File.SetLastWriteTimeUtc(tmp, stamp);
        // A rename replaces the directory entry instead of writing through it, so a hard-linked original stays untouched.
        File.Replace(tmp, path, null);
        Log.LogMessage(MessageImportance.High, "EmaGen: marked " + Version + " weak in " + path);
    }

    private static void Check(byte[] d, long at, int size)
    {
        if (at < 0 || at + size > d.Length) throw new InvalidDataException("ELF structure points outside the file");
    }

    private static int U16(byte[] d, long at) { Check(d, at, 2); return BitConverter.ToUInt16(d, (int)at); }
    private static uint U32(byte[] d, long at) { Check(d, at, 4); return BitConverter.ToUInt32(d, (int)at); }
    private static ulong U64(byte[] d, long at) { Check(d, at, 8); return BitConverter.ToUInt64(d, (int)at); }
}

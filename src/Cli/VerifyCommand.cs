using System;
using System.Collections.Generic;
using System.IO;
using EmaGen.Dcp;

namespace EmaGen.Cli;

/// <summary><c>emagen verify DIR</c>: reads every record (CRC-32, sizes) and checks that every tensor's chunks tile it.</summary>
internal static class VerifyCommand
{
    public static int Run(string directory, TextWriter stdout)
    {
        var reader = DcpFolder.Open(directory);
        var problems = new List<string>();
        int records = 0;
        foreach (var entry in reader.Entries)
        {
            try
            {
                if (entry is DcpTensorEntry t)
                {
                    CheckTiling(t, problems);
                    foreach (var chunk in t.Chunks)
                    {
                        using var part = reader.ReadSlice(t.Key, chunk.Offsets, chunk.Sizes);
                        records++;
                    }
                }
                else
                {
                    reader.ReadValue(entry.Key);
                    records++;
                }
            }
            catch (CheckpointFormatException e)
            {
                problems.Add(e.Message);
            }
        }
        foreach (var p in problems) stdout.WriteLine("problem: " + p);
        if (problems.Count == 0)
        {
            stdout.WriteLine($"OK: {directory}: {reader.Entries.Count} keys, {records} records read, CRCs, sizes and chunk tiling sound");
            return 0;
        }
        stdout.WriteLine($"FAILED: {directory}: {problems.Count} problem(s)");
        return 1;
    }

    // Overlapping chunks never get here: the metadata reader refuses them when the folder is opened.
    private static void CheckTiling(DcpTensorEntry t, List<string> problems)
    {
        long volume = 0;
        foreach (var c in t.Chunks) volume += c.Numel;
        if (t.Size.Length > 0 && volume != t.Numel)
        {
            problems.Add($"'{t.Key}': chunks hold {volume} elements, the tensor {t.Numel}");
        }
    }
}

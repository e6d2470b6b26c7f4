using System;
using System.Collections.Generic;
using System.Threading.Tasks;
using EmaGen.Dcp;
using TorchSharp;

namespace EmaGen;

/// <summary>The key layout of an EMA checkpoint: <c>{prefix}{parameter name}</c> tensors plus <c>{prefix}_emagen.*</c> values.</summary>
public static class EmaCheckpoint
{
    /// <summary>The default key prefix: the EMA's shadows under <c>ema.</c>, as PyTorch trainers name an EMA submodule.</summary>
    public const string DefaultPrefix = "ema.";

    /// <summary>The value marking an EmaGen EMA checkpoint (key <c>{prefix}_emagen.format</c>).</summary>
    public const string Format = "emagen.ema/1";

    internal const string StateSegment = "_emagen.";

    internal sealed record Loaded(Dictionary<string, torch.Tensor> Tensors, long? Step, double? Decay, string? Schedule);

    /// <summary>One profile's keys: its shadows under <paramref name="prefix"/> plus its step, decay, schedule and format values.</summary>
    internal static IEnumerable<KeyValuePair<string, object?>> ProfileState(
        string prefix, IReadOnlyList<string> names, Func<string, torch.Tensor> shadow, long step, double decay, string schedule)
    {
        foreach (var name in names) yield return new(prefix + name, shadow(name));
        yield return new(prefix + StateSegment + "step", step);
        yield return new(prefix + StateSegment + "decay", decay);
        yield return new(prefix + StateSegment + "schedule", schedule);
        yield return new(prefix + StateSegment + "format", Format);
    }

    /// <summary>The top-level keys of a multi-profile checkpoint: the profile list (comma-separated names), step and format.</summary>
    internal static IEnumerable<KeyValuePair<string, object?>> ManagerState(string prefix, long step, IEnumerable<string> profiles)
    {
        yield return new(prefix + StateSegment + "profiles", string.Join(",", profiles));
        yield return new(prefix + StateSegment + "step", step);
        yield return new(prefix + StateSegment + "format", Format);
    }

    /// <summary>
    /// Waits for a background write and forgets it. Its failure is not rethrown here: it belongs to whoever holds the
    /// task that <c>SaveAsync</c> returned.
    /// </summary>
    internal static void WaitForWrite(ref Task? pending)
    {
        if (pending is not { } write) return;
        try
        {
            write.GetAwaiter().GetResult();
        }
        catch (Exception) when (write.IsFaulted || write.IsCanceled)
        {
        }
        pending = null;
    }

    /// <summary>Writes <paramref name="state"/> on a background task, then disposes <paramref name="copies"/> whatever happened.</summary>
    internal static Task WriteInBackground(string directory, List<KeyValuePair<string, object?>> state, List<torch.Tensor> copies, DcpWriteOptions? options) =>
        Task.Run(() =>
        {
            try
            {
                DcpWriter.Save(directory, state, options);
            }
            finally
            {
                foreach (var c in copies) c.Dispose();
            }
        });

    /// <summary>The profile names stored under <paramref name="prefix"/>, or null for a single-profile checkpoint.</summary>
    internal static IReadOnlyList<string>? ReadProfileNames(DcpReader reader, string directory, string prefix)
    {
        var key = prefix + StateSegment + "profiles";
        foreach (var entry in reader.Entries)
        {
            if (entry.Key != key) continue;
            if (entry is not DcpBytesEntry || reader.ReadValue(key) is not string text || text.Length == 0)
            {
                throw new CheckpointFormatException($"{directory}: '{key}' is not a comma-separated list of profile names.");
            }
            return text.Split(',');
        }
        return null;
    }

    /// <summary>Reads every tensor under <paramref name="prefix"/> (only <paramref name="onlyNames"/> when given) and the manager state.</summary>
    internal static Loaded Read(DcpReader reader, string directory, string prefix, IEnumerable<string>? onlyNames)
    {
        var wanted = onlyNames is null ? null : new HashSet<string>(onlyNames, StringComparer.Ordinal);
        var tensors = new Dictionary<string, torch.Tensor>(StringComparer.Ordinal);
        long? step = null;
        double? decay = null;
        string? schedule = null;
        try
        {
            foreach (var entry in reader.Entries)
            {
                if (!entry.Key.StartsWith(prefix, StringComparison.Ordinal)) continue;
                var name = entry.Key[prefix.Length..];
                if (name.StartsWith(StateSegment, StringComparison.Ordinal))
                {
                    if (entry is not DcpBytesEntry) continue;
                    var value = reader.ReadValue(entry.Key);
                    switch (name[StateSegment.Length..])
                    {
                        case "step": step = value as long? ?? throw new CheckpointFormatException($"{directory}: '{entry.Key}' is not an integer."); break;
                        case "decay": decay = value as double? ?? throw new CheckpointFormatException($"{directory}: '{entry.Key}' is not a number."); break;
                        case "schedule": schedule = value as string ?? throw new CheckpointFormatException($"{directory}: '{entry.Key}' is not a string."); break;
                    }
                    continue;
                }
                if (entry is not DcpTensorEntry || (wanted is not null && !wanted.Contains(name))) continue;
                tensors[name] = reader.ReadTensor(entry.Key);
            }
            return new Loaded(tensors, step, decay, schedule);
        }
        catch
        {
            foreach (var t in tensors.Values) t.Dispose();
            throw;
        }
    }
}

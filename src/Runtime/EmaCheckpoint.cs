using System;
using System.Collections.Generic;
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

    internal static IEnumerable<KeyValuePair<string, object?>> StateToSave<TModel>(
        string prefix, IReadOnlyList<string> names, EmaManager<TModel> manager, long step, double decay, string schedule)
        where TModel : torch.nn.Module, IEmaTracked<TModel>
    {
        foreach (var name in names) yield return new(prefix + name, manager[name]);
        yield return new(prefix + StateSegment + "step", step);
        yield return new(prefix + StateSegment + "decay", decay);
        yield return new(prefix + StateSegment + "schedule", schedule);
        yield return new(prefix + StateSegment + "format", Format);
    }

    /// <summary>Reads every tensor under <paramref name="prefix"/> (only <paramref name="onlyNames"/> when given) and the manager state.</summary>
    internal static Loaded Read(string directory, string prefix, IEnumerable<string>? onlyNames)
    {
        var reader = DcpReader.Open(directory);
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

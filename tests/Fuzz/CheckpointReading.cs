using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using EmaGen.Dcp;
using EmaGen.Dcp.Pickle;
using TorchSharp;

namespace EmaGen.Fuzz;

/// <summary>What a read produced, as comparable bytes per label (tensor bytes with dtype and shape, values as text).</summary>
public sealed class Fingerprint
{
    private readonly List<(string Label, byte[] Bytes)> _parts = new();

    public void Add(string label, torch.Tensor tensor)
    {
        using var c = tensor.contiguous();
        var header = $"{tensor.dtype}[{string.Join(",", tensor.shape)}]";
        _parts.Add((label + " " + header, c.bytes.ToArray()));
    }

    public void Add(string label, string text) => _parts.Add((label, System.Text.Encoding.UTF8.GetBytes(text)));

    public bool SameAs(Fingerprint other) =>
        _parts.Count == other._parts.Count && _parts.Zip(other._parts).All(p => p.First.Label == p.Second.Label && p.First.Bytes.AsSpan().SequenceEqual(p.Second.Bytes));

    /// <summary>The first label whose bytes differ, for reports.</summary>
    public string FirstDifference(Fingerprint other)
    {
        for (int i = 0; i < Math.Min(_parts.Count, other._parts.Count); i++)
        {
            if (_parts[i].Label != other._parts[i].Label || !_parts[i].Bytes.AsSpan().SequenceEqual(other._parts[i].Bytes)) return _parts[i].Label;
        }
        return $"{_parts.Count} vs {other._parts.Count} parts";
    }
}

/// <summary>The three ways a case reads a checkpoint, each giving a <see cref="Fingerprint"/>.</summary>
public sealed class CheckpointReading : IDisposable
{
    private readonly FuzzNet _model = new();
    private readonly EmaManager<FuzzNet> _dense;
    private readonly EmaManager<FuzzNet> _profiles;
    private readonly ShardedEmaManager<FuzzNet> _rank;
    private readonly string[] _names;
    private readonly Dictionary<string, List<string>> _keys = new();

    public CheckpointReading()
    {
        _dense = new EmaManager<FuzzNet>(_model, 0.9);
        _profiles = new EmaManager<FuzzNet>(_model, Corpus.ProfileOptions());
        _rank = new ShardedEmaManager<FuzzNet>(_model, 1, 3, new EmaOptions { Decay = 0.9 });
        _names = _model.named_parameters().Select(p => p.name).ToArray();
    }

    /// <summary>Whether a read changes state that must stay untouched when it fails.</summary>
    public static bool Loads(ReadKind kind) => kind is ReadKind.EmaLoad or ReadKind.EmaProfilesLoad or ReadKind.ShardedLoad;

    public EmaManager<FuzzNet> ManagerFor(ReadKind kind) => kind == ReadKind.EmaProfilesLoad ? _profiles : _dense;

    /// <summary>Remembers which keys the pristine folder holds: a PyTorch consumer reads the keys it expects.</summary>
    public void LearnKeys(CorpusEntry entry) => _keys[entry.Name] = DcpReader.Open(entry.Folder).Entries.Select(e => e.Key).ToList();

    /// <summary>Reads <paramref name="folder"/> as <paramref name="entry"/> is read; throws what the library throws.</summary>
    public Fingerprint Read(CorpusEntry entry, string folder)
    {
        switch (entry.Read)
        {
            case ReadKind.DcpRead:
                return ReadDcp(folder, _keys[entry.Name]);
            case ReadKind.ShardedLoad:
                _rank.Load(folder);
                return RankState();
            case ReadKind.PostHocSynthesize:
                {
                    var snapshots = Path.GetDirectoryName(folder)!;
                    var output = Path.Combine(Path.GetDirectoryName(snapshots)!, "synthesized");
                    if (Directory.Exists(output)) Directory.Delete(output, recursive: true);
                    PostHocEma.Synthesize(snapshots, 0.075, 4, output);
                    var reader = DcpReader.Open(output);
                    var f = new Fingerprint();
                    f.Add("step", Text(reader.ReadValue("ema._emagen.step")));
                    foreach (var entryKey in reader.Entries.OfType<DcpTensorEntry>().Select(e => e.Key).Order(StringComparer.Ordinal))
                    {
                        using var t = reader.ReadTensor(entryKey);
                        f.Add(entryKey, t);
                    }
                    return f;
                }
            default:
                {
                    var ema = ManagerFor(entry.Read);
                    ema.Load(folder);
                    return State(ema);
                }
        }
    }

    /// <summary>The state a failed read must leave as it was (null for reads that change nothing).</summary>
    public Fingerprint? StateFor(ReadKind kind) => kind switch
    {
        ReadKind.EmaLoad or ReadKind.EmaProfilesLoad => State(ManagerFor(kind)),
        ReadKind.ShardedLoad => RankState(),
        _ => null,
    };

    private Fingerprint RankState()
    {
        var f = new Fingerprint();
        f.Add("step", _rank.Step.ToString());
        foreach (var name in _names) f.Add(name, _rank[name]);
        return f;
    }

    /// <summary>Every shadow of every profile, and the step.</summary>
    public static Fingerprint State(EmaManager<FuzzNet> ema)
    {
        var f = new Fingerprint();
        f.Add("step", ema.Step.ToString());
        foreach (var profile in ema.Profiles)
        {
            foreach (var name in ema.TrackedNames) f.Add(profile.Name + "/" + name, profile[name]);
        }
        return f;
    }

    /// <summary>Fills every shadow with a value no checkpoint holds, so a later successful load must visibly write.</summary>
    public void Poison(ReadKind kind)
    {
        if (kind == ReadKind.ShardedLoad)
        {
            using var _ = torch.no_grad();
            foreach (var name in _names) _rank[name].fill_(12345.0);
            return;
        }
        if (!Loads(kind)) return;
        var ema = ManagerFor(kind);
        foreach (var profile in ema.Profiles)
        {
            profile.LoadStateDict(ema.TrackedNames.ToDictionary(n => n, n => torch.full_like(profile[n], 12345.0)));
        }
    }

    private static Fingerprint ReadDcp(string folder, List<string> keys)
    {
        var reader = DcpReader.Open(folder);
        var f = new Fingerprint();
        foreach (var key in keys)
        {
            var entry = reader.Metadata.Find(key) ?? throw new CheckpointFormatException($"{folder}: no key '{key}'.");
            if (entry is DcpTensorEntry t)
            {
                using (var whole = reader.ReadTensor(key)) f.Add(key, whole);
                if (t.Chunks.Count > 1 && t.Size.Length > 0 && t.Size[0] > 1)
                {
                    var offsets = new long[t.Size.Length];
                    var sizes = (long[])t.Size.Clone();
                    offsets[0] = 1;
                    sizes[0] -= 1;
                    using var box = reader.ReadSlice(key, offsets, sizes);
                    f.Add(key + "[1:]", box);
                }
            }
            else
            {
                // A consumer wants plain values: one the safe reader would not decode is an error to it, not data.
                var value = reader.ReadValue(key);
                if (value is RawPickleValue) throw new CheckpointFormatException($"{folder}: '{key}' is not a plain value.");
                f.Add(key, Text(value));
            }
        }
        return f;
    }

    private static string Text(object? value, int depth = 0) => depth > 32 ? "..." : value switch
    {
        null => "None",
        RawPickleValue raw => "raw:" + Convert.ToHexString(raw.Pickle),
        PickleTuple t => "(" + string.Join(",", t.Items.Select(i => Text(i, depth + 1))) + ")",
        List<object?> l => "[" + string.Join(",", l.Select(i => Text(i, depth + 1))) + "]",
        PickleDict d => "{" + string.Join(",", d.Items.Select(kv => Text(kv.Key, depth + 1) + ":" + Text(kv.Value, depth + 1))) + "}",
        double x => x.ToString("R"),
        _ => value.GetType().Name + ":" + value,
    };

    public void Dispose()
    {
        _dense.Dispose();
        _profiles.Dispose();
        _rank.Dispose();
        _model.Dispose();
    }
}

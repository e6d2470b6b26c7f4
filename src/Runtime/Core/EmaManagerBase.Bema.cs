using System;
using System.Collections.Generic;
using System.Linq;
using EmaGen.Dcp;
using TorchSharp;

namespace EmaGen;

// BEMA profiles (a schedule with IsBiasCorrected), for both managers. A step is the ordinary fused update of the EMA;
// on top, each BEMA profile keeps θ₀ (the live weights at its last copy step, at bind before any) in the parameter's
// dtype, and α of its last update. The bias-corrected weights ema + α·(θ − θ₀) exist only where a user reads a
// profile's weights (copies, swaps, state dicts, checkpoints), formed in one pass straight into where they are read,
// from the weights of the model the manager was last updated with (between updates of an every:K profile: those of the
// moment, not of the update).
public abstract partial class EmaManagerBase<TModel>
{
    // Per profile: θ₀ (null for a profile without bias correction) and α of its last update (0 before the first, and
    // at copy steps, where θ₀ is θ).
    private ShadowArena?[] _anchors = [];
    private double[] _alpha = [];
    // The tensors of the model the manager was bound to or last updated: θ of the correction, whatever model a copy,
    // swap or check was last given.
    private torch.Tensor?[] _trained = [];

    private bool _biasCorrected;

    /// <summary>Whether profile <paramref name="profile"/> reads bias-corrected (BEMA) weights.</summary>
    internal bool IsBiasCorrected(int profile) => _anchors[profile] is not null;

    /// <summary>α of profile <paramref name="profile"/>'s last update (0 before it, or without bias correction).</summary>
    internal double AlphaOf(int profile) => _alpha[profile];

    /// <summary>θ₀ of item <paramref name="name"/> in a BEMA profile (tests).</summary>
    internal torch.Tensor AnchorOf(int profile, string name) =>
        TryItem(name, out int i) && _anchors[profile] is { } a ? a[i]! : throw new KeyNotFoundException($"No θ₀ of '{name}' in profile {profile}.");

    // At bind, with the sources of every item alive: θ₀ for each BEMA profile, a copy of the live boxes.
    private void BindAnchors(List<EmaParameterInfo> boxes, List<torch.Tensor> sources)
    {
        _alpha = new double[_profiles.Length];
        _anchors = new ShadowArena?[_profiles.Length];
        _trained = _items.Select(i => _slots[i.Slot].Tensor).ToArray();
        var parameterDType = boxes.Select(b => b with { ShadowDType = b.DType }).ToList();
        for (int k = 0; k < _profiles.Length; k++)
        {
            if (_profiles[k].Schedule.IsBiasCorrected) _anchors[k] = new ShadowArena(parameterDType, sources, packParameters: false);
        }
        _biasCorrected = _anchors.Any(a => a is not null);
    }

    // After a step's update: remember the model, and per BEMA profile that updated, α of the step or, at a copy step, θ₀.
    private void AfterBiasCorrectedStep(double[] decays, long step)
    {
        for (int i = 0; i < _items.Length; i++) _trained[i] = _live.Tensor(_items[i].Slot);
        for (int k = 0; k < _anchors.Length; k++)
        {
            if (_anchors[k] is not { } anchor || double.IsNaN(decays[k])) continue;
            if (decays[k] == 0)
            {
                // Burn-in only: after it, a step adds no tensor work and no allocation to the fused update.
                using var _ = torch.no_grad();
                for (int i = 0; i < _items.Length; i++)
                {
                    using var box = _items[i].BoxOf(_trained[i] ?? _slots[_items[i].Slot].Tensor!);
                    if (_nonFinite == NonFinitePolicy.Allow || !DTypes.IsFloatingPoint(box.dtype))
                    {
                        InPlace.Release(anchor[i]!.copy_(box), anchor[i]!);
                        continue;
                    }
                    // Under the guard, as the EMA's copy: a non-finite live element leaves θ₀ as it was.
                    using var finite = box.isfinite();
                    using var kept = torch.where(finite, box, anchor[i]!);
                    InPlace.Release(anchor[i]!.copy_(kept), anchor[i]!);
                }
                _alpha[k] = 0;
            }
            else
            {
                _alpha[k] = _schedules[k].AlphaAt(step);
            }
        }
    }

    // The one pass that forms a profile's weights into a destination (copies, swaps, saves, Switch EMA), on the update's
    // worker pool; made on first use.
    private BiasCorrection? _correction;

    private protected BiasCorrection Correction => _correction ??= new BiasCorrection(_pool, Options.ForceTorchOps, _nonFinite != NonFinitePolicy.Allow);

    /// <summary>
    /// Queues into <see cref="Correction"/> item <paramref name="item"/>'s weights as profile <paramref name="profile"/>
    /// gives them to a reader, written into <paramref name="dest"/> (any dtype; may be the live tensor itself):
    /// <c>ema + α·(θ − θ₀)</c> for a BEMA profile, θ the manager's last trained weights (or, with
    /// <paramref name="live"/>, those), <paramref name="ema"/> itself otherwise; with <paramref name="blend"/> below 1,
    /// blended from θ toward that (Switch EMA). Allocates nothing for a whole (dense) box.
    /// </summary>
    private protected void QueueReadOut(int profile, int item, torch.Tensor ema, torch.Tensor dest, torch.Tensor? live = null, double blend = 1)
    {
        var theta = live ?? _trained[item] ?? _slots[_items[item].Slot].Tensor!;
        if (!_items[item].LiveIsBox)
        {
            theta = _items[item].BoxOf(theta);
            Correction.Hold(theta);
        }
        Correction.Queue(dest, ema, theta, _anchors[profile]?[item], _alpha[profile], blend);
    }

    /// <summary>
    /// Item <paramref name="item"/>'s weights as profile <paramref name="profile"/> gives them to a reader, in a new
    /// tensor of the shadow's dtype: <c>ema + α·(θ − θ₀)</c> for a BEMA profile (from <paramref name="ema"/>, the
    /// shadow or a staged copy of it), a copy of <paramref name="ema"/> otherwise.
    /// </summary>
    private protected torch.Tensor ReadOut(int profile, int item, torch.Tensor ema)
    {
        using var _ = torch.no_grad();
        if (_anchors[profile] is null) return ema.clone();
        var d = torch.empty_like(ema);
        try
        {
            QueueReadOut(profile, item, ema, d);
            Correction.Run();
        }
        catch
        {
            d.Dispose();
            throw;
        }
        return d;
    }

    /// <summary>Profile <paramref name="profile"/>'s weights of every item written into <paramref name="dest"/> (per item) in one pass.</summary>
    private protected void WriteReadOut(int profile, Func<int, torch.Tensor> ema, Func<int, torch.Tensor> dest)
    {
        Correction.WakeAhead();
        for (int i = 0; i < _items.Length; i++) QueueReadOut(profile, i, ema(i), dest(i));
        Correction.Run();
    }

    /// <summary>
    /// A BEMA profile's corrected box of item <paramref name="item"/>, made only when a synchronous save writes it and
    /// freed right after: the write buffer is the only corrected copy, one tensor at a time.
    /// </summary>
    private DeferredShard DeferredReadOut(int profile, int item, string key)
    {
        var shadow = _arenas[profile][item]!;
        var made = new DeferredTensor(() => ReadOut(profile, item, shadow), shadow.dtype, shadow.shape);
        return new DeferredShard(key, made, _items[item].Info.Shape, _items[item].Offsets, _items[item].Replicated);
    }

    // The resume keys of a BEMA profile's checkpoint: its EMA, θ₀ and α (the profile's usual keys hold the corrected weights).
    private string BemaEmaKey(string profilePrefix, int item) => CheckpointKeys.Of(profilePrefix, CheckpointKeys.BemaEma) + "." + _items[item].Info.Name;

    private string BemaAnchorKey(string profilePrefix, int item) => CheckpointKeys.Of(profilePrefix, CheckpointKeys.BemaTheta0) + "." + _items[item].Info.Name;

    // What a checkpoint of BEMA profile k holds beside its corrected weights: each item's EMA and θ₀, and α.
    private IEnumerable<KeyValuePair<string, object?>> BemaResumeState(int k, string profilePrefix, Func<int, torch.Tensor> ema, Func<int, torch.Tensor> anchor)
    {
        for (int i = 0; i < _items.Length; i++)
        {
            var item = _items[i];
            yield return new(BemaEmaKey(profilePrefix, i), new DcpShard(BemaEmaKey(profilePrefix, i), ema(i), item.Info.Shape, item.Offsets, item.Replicated));
            yield return new(BemaAnchorKey(profilePrefix, i), new DcpShard(BemaAnchorKey(profilePrefix, i), anchor(i), item.Info.Shape, item.Offsets, item.Replicated));
        }
        yield return new(CheckpointKeys.Of(profilePrefix, CheckpointKeys.BemaAlpha), _alpha[k]);
    }

    // A load of BEMA profile k: its EMA and θ₀ from the resume keys (each checked: present, this shape, the right
    // dtype), read into staging before anything is written.
    private void StageBemaLoad(DcpReader reader, string directory, int k, string profilePrefix, List<(int Item, List<string> Names)> items,
        List<(torch.Tensor Target, torch.Tensor Data)> staged)
    {
        var anchor = _anchors[k]!;
        foreach (var (i, _) in items)
        {
            foreach (var (key, target) in new[] { (BemaEmaKey(profilePrefix, i), _arenas[k][i]!), (BemaAnchorKey(profilePrefix, i), anchor[i]!) })
            {
                if (reader.Metadata.Find(key) is not DcpTensorEntry entry)
                {
                    throw new CheckpointFormatException($"{directory}: '{key}' is missing; a BEMA profile resumes from its EMA and θ₀ (was the checkpoint written by a BEMA profile?).");
                }
                if (!TorchDTypes.TryGet(entry.DType, out var dtype, out _) || dtype != target.dtype || !entry.Size.AsSpan().SequenceEqual(_items[i].Info.Shape))
                {
                    throw new CheckpointFormatException(
                        $"{directory}: '{key}' is {entry.DType} [{string.Join(", ", entry.Size)}], expected {target.dtype} [{string.Join(", ", _items[i].Info.Shape)}].");
                }
                staged.Add((target, reader.ReadSlice(key, _items[i].Offsets, _items[i].Sizes)));
            }
        }
    }
}

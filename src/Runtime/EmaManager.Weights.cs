using System;
using System.Collections.Generic;
using System.Linq;
using TorchSharp;

namespace EmaGen;

// Moving weights between the shadows and models or state dicts: export, scoped swap, state dicts.
public sealed partial class EmaManager<TModel>
{
    /// <summary>
    /// Copies the averaged weights into <paramref name="model"/> (the trained model itself, or a second instance of the
    /// same class, e.g. for evaluation or export). Parameters without a shadow are left as they are.
    /// </summary>
    public void CopyTo(TModel model) => CopyTo(0, model);

    internal void CopyTo(int profile, TModel model)
    {
        ArgumentNullException.ThrowIfNull(model);
        ThrowIfDisposed();
        ThrowIfSwapped();
        using var _ = torch.no_grad();
        foreach (var (target, shadow) in ShadowPairs(model, profile))
        {
            InPlace.Release(target.copy_(shadow), target);
        }
    }

    /// <summary>
    /// Puts the EMA weights into <paramref name="model"/> until the returned object is disposed, then restores the
    /// model's weights bit for bit (also on exceptions): <c>using (ema.SwapInto(model)) { Evaluate(model); }</c>.
    /// While a swap is active, <see cref="Update"/>, saving and loading throw.
    /// </summary>
    public EmaWeightSwap SwapInto(TModel model) => SwapInto(0, model);

    internal EmaWeightSwap SwapInto(int profile, TModel model)
    {
        ArgumentNullException.ThrowIfNull(model);
        ThrowIfDisposed();
        ThrowIfSwapped();
        _activeSwap = new EmaWeightSwap(ShadowPairs(model, profile), () => _activeSwap = null);
        return _activeSwap;
    }

    /// <summary>Caller-owned copies of every shadow (first profile), keyed by parameter name, in <c>named_parameters()</c> order.</summary>
    public Dictionary<string, torch.Tensor> StateDict() => StateDict(0);

    internal Dictionary<string, torch.Tensor> StateDict(int profile)
    {
        ThrowIfDisposed();
        ThrowIfSwapped();
        using var _ = torch.no_grad();
        var state = new Dictionary<string, torch.Tensor>(_trackedIndex.Count, StringComparer.Ordinal);
        foreach (var name in TrackedNames)
        {
            state.Add(name, _arenas[profile][_trackedIndex[name]]!.clone());
        }
        return state;
    }

    /// <summary>
    /// Copies <paramref name="state"/> into the shadows (first profile). Every entry is checked before anything is
    /// written, so a rejected load leaves every shadow unchanged.
    /// </summary>
    /// <param name="state">Tensors keyed by parameter name; values are copied, the caller keeps ownership.</param>
    /// <param name="strict">When true, <paramref name="state"/> must name exactly the averaged parameters.</param>
    /// <exception cref="ArgumentException">Missing or unexpected names (strict), or a shape or dtype mismatch, or a null tensor.</exception>
    public void LoadStateDict(IReadOnlyDictionary<string, torch.Tensor> state, bool strict = true) => LoadStateDict(0, state, strict);

    internal void LoadStateDict(int profile, IReadOnlyDictionary<string, torch.Tensor> state, bool strict)
    {
        ArgumentNullException.ThrowIfNull(state);
        ThrowIfDisposed();
        ThrowIfSwapped();
        Commit(PlanLoad(profile, state, strict));
    }

    // Checks every entry of `state` against profile `profile`'s shadows; returns the copies to make, or throws having written nothing.
    private List<(torch.Tensor Target, torch.Tensor Source)> PlanLoad(int profile, IReadOnlyDictionary<string, torch.Tensor> state, bool strict)
    {
        foreach (var (name, tensor) in state)
        {
            if (tensor is null) throw new ArgumentException($"EMA state dict does not fit {typeof(TModel).Name}: '{name}': value is null.", nameof(state));
        }
        CheckFits(state.Select(kv => (kv.Key, (torch.ScalarType?)kv.Value.dtype, kv.Value.shape)), strict, nameof(state));
        var plan = new List<(torch.Tensor Target, torch.Tensor Source)>();
        foreach (var (name, tensor) in state.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            if (_trackedIndex.TryGetValue(name, out int i)) plan.Add((_arenas[profile][i]!, tensor));
        }
        return plan;
    }

    // The rules of a load, applied to names, dtypes and shapes alone: to a state dict, or to a checkpoint's metadata
    // before any of its tensors is read (so a checkpoint that cannot fit costs no memory). A null dtype is one that
    // TorchSharp cannot represent.
    private void CheckFits(IEnumerable<(string Name, torch.ScalarType? DType, long[] Shape)> entries, bool strict, string parameter)
    {
        var list = entries.ToList();
        if (strict)
        {
            var present = new HashSet<string>(list.Select(e => e.Name), StringComparer.Ordinal);
            var missing = TrackedNames.Where(n => !present.Contains(n)).Order(StringComparer.Ordinal).ToList();
            var unexpected = present.Where(n => !_trackedIndex.ContainsKey(n)).Order(StringComparer.Ordinal).ToList();
            if (missing.Count > 0 || unexpected.Count > 0)
            {
                var parts = new List<string>();
                if (missing.Count > 0) parts.Add($"{missing.Count} missing ({Sample(missing)})");
                if (unexpected.Count > 0) parts.Add($"{unexpected.Count} unexpected ({Sample(unexpected)})");
                throw new ArgumentException(
                    $"EMA state dict does not match {typeof(TModel).Name}: {string.Join("; ", parts)}.", parameter);
            }
        }

        var problems = new List<string>();
        foreach (var (name, dtype, shape) in list.OrderBy(e => e.Name, StringComparer.Ordinal))
        {
            if (!_trackedIndex.TryGetValue(name, out int i)) continue;
            var info = _all[i];
            if (dtype != info.ShadowDType)
            {
                problems.Add($"'{name}': dtype {dtype?.ToString() ?? "unsupported"}, expected {info.ShadowDType}");
            }
            if (!shape.AsSpan().SequenceEqual(info.Shape))
            {
                problems.Add($"'{name}': shape [{string.Join(", ", shape)}], expected {info.ShapeText}");
            }
        }
        if (problems.Count > 0)
        {
            throw new ArgumentException(
                $"EMA state dict does not fit {typeof(TModel).Name}: {problems.Count} mismatch(es): {Sample(problems, "; ")}.", parameter);
        }
    }

    private static void Commit(List<(torch.Tensor Target, torch.Tensor Source)> plan)
    {
        using var _ = torch.no_grad();
        foreach (var (target, source) in plan)
        {
            InPlace.Release(target.copy_(source), target);
        }
    }
}

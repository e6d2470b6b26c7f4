using System;
using System.Collections.Generic;
using TorchSharp;

namespace EmaGen.Dcp;

/// <summary>
/// The copies an asynchronous save writes from while training goes on, for both managers: one copy of each shadow
/// arena's group buffer (a few large copies per save), made on the first save and refreshed in place on every later
/// one, because a fresh allocation's page faults cost more than the copy; and views into them shaped like the arenas'
/// shadows. Its one owner, <see cref="SaveQueue"/>, waits for the previous write before refreshing or disposing them,
/// since that write may still be reading the copies. A set with a fill is not a copy but is written by its fill, in
/// place, on each refresh (a BEMA profile's corrected weights, formed straight into their staging buffers).
/// </summary>
internal sealed class StagingCopies : IDisposable
{
    private readonly IReadOnlyList<StagedSet> _sets;
    private readonly List<torch.Tensor> _sources = new();
    // Per buffer: filled by its set's fill rather than copied.
    private readonly List<bool> _filled = new();
    private torch.Tensor[]? _copies;
    private torch.Tensor?[][]? _views;

    /// <param name="sets">The arenas staged (their group buffers are never re-pointed while this lives), each copied or filled.</param>
    public StagingCopies(IReadOnlyList<StagedSet> sets)
    {
        _sets = sets;
        foreach (var set in sets)
        {
            foreach (var group in set.Arena.Groups)
            {
                _sources.Add(group.Shadow);
                _filled.Add(set.Fill is not null);
            }
        }
    }

    /// <summary>
    /// Copies every group buffer into its staging copy (or runs its set's fill), creating them on first use; returns, per
    /// set, per arena index, a view of the staged shadow (null where the arena has none).
    /// </summary>
    public torch.Tensor?[][] Refresh()
    {
        using var _ = torch.no_grad();
        if (_copies is null)
        {
            var made = new torch.Tensor[_sources.Count];
            try
            {
                for (int i = 0; i < made.Length; i++) made[i] = (_filled[i] ? torch.empty_like(_sources[i]) : _sources[i].clone()).DetachFromDisposeScope();
            }
            catch
            {
                foreach (var t in made) t?.Dispose();
                throw;
            }
            _copies = made;
            _views = new torch.Tensor?[_sets.Count][];
            int first = 0;
            for (int k = 0; k < _sets.Count; k++)
            {
                int groups = _sets[k].Arena.Groups.Count;
                _views[k] = _sets[k].Arena.ViewsIn(new ArraySegment<torch.Tensor>(made, first, groups));
                first += groups;
            }
        }
        else
        {
            for (int i = 0; i < _copies.Length; i++)
            {
                if (!_filled[i]) InPlace.Release(_copies[i].copy_(_sources[i]), _copies[i]);
            }
        }
        for (int k = 0; k < _sets.Count; k++) _sets[k].Fill?.Invoke(_views![k]);
        return _views!;
    }

    public void Dispose()
    {
        foreach (var views in _views ?? [])
        {
            foreach (var v in views) v?.Dispose();
        }
        foreach (var t in _copies ?? []) t.Dispose();
        _views = null;
        _copies = null;
    }
}

/// <summary>One arena a save stages: copied from its group buffers, or (with <paramref name="Fill"/>) written by the fill into views laid out like it.</summary>
internal readonly record struct StagedSet(ShadowArena Arena, Action<torch.Tensor?[]>? Fill = null);

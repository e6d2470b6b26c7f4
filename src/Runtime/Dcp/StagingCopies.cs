using System;
using System.Collections.Generic;
using TorchSharp;

namespace EmaGen.Dcp;

/// <summary>
/// The copies an asynchronous save writes from while training goes on, for both managers: one copy of each shadow
/// arena's group buffer (a few large copies per save), made on the first save and refreshed in place on every later
/// one, because a fresh allocation's page faults cost more than the copy; and views into them shaped like the arenas'
/// shadows. Its one owner, <see cref="SaveQueue"/>, waits for the previous write before refreshing or disposing them,
/// since that write may still be reading the copies.
/// </summary>
internal sealed class StagingCopies : IDisposable
{
    private readonly IReadOnlyList<ShadowArena> _arenas;
    private readonly List<torch.Tensor> _sources = new();
    private torch.Tensor[]? _copies;
    private torch.Tensor?[][]? _views;

    /// <param name="arenas">One per profile; their group buffers are never re-pointed while this lives.</param>
    public StagingCopies(IReadOnlyList<ShadowArena> arenas)
    {
        _arenas = arenas;
        foreach (var arena in arenas)
        {
            foreach (var group in arena.Groups) _sources.Add(group.Shadow);
        }
    }

    /// <summary>
    /// Copies every group buffer into its staging copy, creating them on first use; returns, per arena, per arena index,
    /// a view of the staged shadow (null where the arena has none).
    /// </summary>
    public torch.Tensor?[][] Refresh()
    {
        using var _ = torch.no_grad();
        if (_copies is null)
        {
            var made = new torch.Tensor[_sources.Count];
            try
            {
                for (int i = 0; i < made.Length; i++) made[i] = _sources[i].clone().DetachFromDisposeScope();
            }
            catch
            {
                foreach (var t in made) t?.Dispose();
                throw;
            }
            _copies = made;
            _views = new torch.Tensor?[_arenas.Count][];
            int first = 0;
            for (int k = 0; k < _arenas.Count; k++)
            {
                int groups = _arenas[k].Groups.Count;
                _views[k] = _arenas[k].ViewsIn(new ArraySegment<torch.Tensor>(made, first, groups));
                first += groups;
            }
            return _views;
        }
        for (int i = 0; i < _copies.Length; i++) InPlace.Release(_copies[i].copy_(_sources[i]), _copies[i]);
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

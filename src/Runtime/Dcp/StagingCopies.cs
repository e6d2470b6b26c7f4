using System;
using System.Collections.Generic;
using TorchSharp;

namespace EmaGen.Dcp;

/// <summary>
/// The copies an asynchronous save writes from while training goes on, for both managers: one tensor per source (the
/// dense manager's flat group buffers, the sharded manager's shards), made on the first save and refreshed in place on
/// every later one, because a fresh allocation's page faults cost more than the copy. The caller waits for the previous
/// write before refreshing, since that write may still be reading the copies.
/// </summary>
internal sealed class StagingCopies : IDisposable
{
    private readonly IReadOnlyList<torch.Tensor> _sources;
    private torch.Tensor[]? _copies;

    /// <param name="sources">The tensors to copy, in a fixed order; never re-pointed while this lives.</param>
    public StagingCopies(IReadOnlyList<torch.Tensor> sources) => _sources = sources;

    /// <summary>Whether the copies exist (after the first <see cref="Refresh"/>).</summary>
    public bool Made => _copies is not null;

    /// <summary>Copies every source into its staging tensor, creating them on first use; returns them in source order.</summary>
    public IReadOnlyList<torch.Tensor> Refresh()
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
            return _copies = made;
        }
        for (int i = 0; i < _copies.Length; i++) InPlace.Release(_copies[i].copy_(_sources[i]), _copies[i]);
        return _copies;
    }

    public void Dispose()
    {
        foreach (var t in _copies ?? []) t.Dispose();
        _copies = null;
    }
}

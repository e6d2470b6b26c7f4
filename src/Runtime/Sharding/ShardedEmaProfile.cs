using System.Collections.Generic;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// One profile of a <see cref="ShardedEmaManager{TModel}"/>: this rank's shards of a full set of shadows with its own
/// schedule, updated with the manager's other profiles in one pass. Indexing by parameter name gives this rank's shard
/// (a tensor the manager owns). A single-profile manager has one profile with an empty name.
/// </summary>
public sealed class ShardedEmaProfile<TModel> : EmaProfileBase where TModel : torch.nn.Module, IEmaTracked<TModel>
{
    private readonly ShardedEmaManager<TModel> _manager;

    internal ShardedEmaProfile(ShardedEmaManager<TModel> manager, int index, string name, EmaSchedule schedule)
        : base(index, name, schedule)
    {
        _manager = manager;
    }

    /// <summary>The manager this profile belongs to.</summary>
    public ShardedEmaManager<TModel> Manager => _manager;

    public override double CurrentDecay => _manager.CurrentDecayOf(Index);

    /// <summary>This rank's shard of parameter <paramref name="name"/> in this profile.</summary>
    /// <exception cref="KeyNotFoundException">No averaged parameter has that name.</exception>
    public override torch.Tensor this[string name] => _manager.ShardOf(Index, name);

    /// <summary>This profile's typed shadow tree over this rank's shards (usually reached through the generated <c>Shadow</c> property).</summary>
    public TShadow GetShadow<TShadow>() where TShadow : class => _manager.GetShadow<TShadow>(Index);
}

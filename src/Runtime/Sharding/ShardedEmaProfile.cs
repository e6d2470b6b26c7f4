using TorchSharp;

namespace EmaGen;

/// <summary>
/// One profile of a <see cref="ShardedEmaManager{TModel}"/>: this rank's shards of a full set of shadows with its own
/// schedule, updated with the manager's other profiles in one pass. A single-profile manager has one profile with an
/// empty name.
/// </summary>
public sealed class ShardedEmaProfile<TModel> : EmaProfileBase where TModel : torch.nn.Module, IEmaTracked<TModel>
{
    internal ShardedEmaProfile(ShardedEmaManager<TModel> manager, int index, string name, EmaSchedule schedule)
        : base(manager, index, name, schedule)
    {
        Manager = manager;
    }

    /// <summary>The manager this profile belongs to.</summary>
    public ShardedEmaManager<TModel> Manager { get; }
}

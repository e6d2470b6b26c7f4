using System.Collections.Generic;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// What every EMA profile is, whichever manager keeps it: a name, a position, a decay schedule, the decay its last
/// update applied, and its shadows by parameter name (whole tensors in an <see cref="EmaManager{TModel}"/>, this rank's
/// shards in a <see cref="ShardedEmaManager{TModel}"/>). Code that only reads profiles (post-hoc snapshots, logging,
/// evaluation loops) takes this type and serves both managers.
/// </summary>
public abstract class EmaProfileBase
{
    private protected EmaProfileBase(int index, string name, EmaSchedule schedule)
    {
        Index = index;
        Name = name;
        Schedule = schedule;
    }

    /// <summary>The profile's name (<see cref="EmaProfileOptions.Name"/>; empty for a single-profile manager).</summary>
    public string Name { get; }

    /// <summary>Position in the manager's <c>Profiles</c>.</summary>
    public int Index { get; }

    /// <summary>The profile's decay schedule.</summary>
    public EmaSchedule Schedule { get; }

    /// <summary>The decay this profile's last update applied (NaN before the first), kept apart from any configured maximum.</summary>
    public abstract double CurrentDecay { get; }

    /// <summary>The shadow of parameter <paramref name="name"/> in this profile (a tensor the manager owns).</summary>
    /// <exception cref="KeyNotFoundException">No averaged parameter has that name.</exception>
    public abstract torch.Tensor this[string name] { get; }

    public override string ToString() => Name.Length == 0 ? Schedule.Describe() : $"{Name}: {Schedule.Describe()}";
}

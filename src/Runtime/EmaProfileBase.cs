using System.Collections.Generic;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// One EMA profile, whichever manager keeps it: a name, a position, a decay schedule, the decay its last update applied,
/// and its shadows by parameter name (whole tensors in an <see cref="EmaManager{TModel}"/>, this rank's boxes in a
/// <see cref="ShardedEmaManager{TModel}"/>), with typed access and state dicts. Code that only reads profiles (post-hoc
/// snapshots, logging, evaluation loops) takes this type and serves both managers.
/// </summary>
public abstract class EmaProfileBase
{
    private readonly IProfileHost _host;

    private protected EmaProfileBase(IProfileHost host, int index, string name, EmaSchedule schedule)
    {
        _host = host;
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
    public double CurrentDecay => _host.CurrentDecayOf(Index);

    /// <summary>The shadow of <paramref name="name"/> in this profile (a tensor the manager owns; this rank's box when sharded).</summary>
    /// <exception cref="KeyNotFoundException">No averaged tensor has that name.</exception>
    public torch.Tensor this[string name] => _host.ShadowOf(Index, name);

    /// <summary>The typed shadow tree of this profile (usually reached through the generated <c>Shadow</c> property).</summary>
    public TShadow GetShadow<TShadow>() where TShadow : class => _host.GetShadow<TShadow>(Index);

    /// <summary>Caller-owned copies of this profile's shadows, keyed by parameter name.</summary>
    public Dictionary<string, torch.Tensor> StateDict() => _host.StateDict(Index);

    /// <summary>
    /// Copies <paramref name="state"/> into this profile's shadows (each of this manager's shape: this rank's box when
    /// sharded). Every entry is checked before any is written, so a rejected load leaves every shadow unchanged.
    /// </summary>
    /// <param name="state">Tensors keyed by parameter name; values are copied, the caller keeps ownership.</param>
    /// <param name="strict">When true, <paramref name="state"/> must name exactly the averaged tensors.</param>
    /// <exception cref="System.ArgumentException">Missing or unexpected names (strict), a shape or dtype mismatch, or a null tensor.</exception>
    public void LoadStateDict(IReadOnlyDictionary<string, torch.Tensor> state, bool strict = true) => _host.LoadStateDict(Index, state, strict);

    public override string ToString() => Name.Length == 0 ? Schedule.Describe() : $"{Name}: {Schedule.Describe()}";
}

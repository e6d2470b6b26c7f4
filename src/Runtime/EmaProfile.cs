using System.Collections.Generic;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// One profile of an <see cref="EmaManager{TModel}"/>: a full set of shadows with its own schedule. The manager updates
/// every profile in one pass; a profile gives typed access (the generated <c>Shadow</c> property), export, swap and
/// state dicts for its own shadows. A single-profile manager has one profile with an empty name.
/// </summary>
public sealed class EmaProfile<TModel> : EmaProfileBase where TModel : torch.nn.Module, IEmaTracked<TModel>
{
    private readonly EmaManager<TModel> _manager;
    private double _currentDecay = double.NaN;

    internal EmaProfile(EmaManager<TModel> manager, int index, string name, EmaSchedule schedule)
        : base(index, name, schedule)
    {
        _manager = manager;
    }

    /// <summary>The manager this profile belongs to.</summary>
    public EmaManager<TModel> Manager => _manager;

    public override double CurrentDecay => _currentDecay;

    internal void SetCurrentDecay(double decay) => _currentDecay = decay;

    /// <summary>The shadow of parameter <paramref name="name"/> in this profile (a view the manager owns).</summary>
    /// <exception cref="KeyNotFoundException">No averaged parameter has that name.</exception>
    public override torch.Tensor this[string name] => _manager.ShadowOf(Index, name);

    /// <summary>The typed shadow tree of this profile (usually reached through the generated <c>Shadow</c> property).</summary>
    public TShadow GetShadow<TShadow>() where TShadow : class => _manager.GetShadow<TShadow>(Index);

    /// <summary>Copies this profile's averaged weights into <paramref name="model"/>.</summary>
    public void CopyTo(TModel model) => _manager.CopyTo(Index, model);

    /// <summary>Puts this profile's weights into <paramref name="model"/> until the returned object is disposed (see <see cref="EmaManager{TModel}.SwapInto(TModel)"/>).</summary>
    public EmaWeightSwap SwapInto(TModel model) => _manager.SwapInto(Index, model);

    /// <summary>Caller-owned copies of this profile's shadows, keyed by parameter name.</summary>
    public Dictionary<string, torch.Tensor> StateDict() => _manager.StateDict(Index);

    /// <summary>Copies <paramref name="state"/> into this profile's shadows, all entries checked before any is written.</summary>
    public void LoadStateDict(IReadOnlyDictionary<string, torch.Tensor> state, bool strict = true) => _manager.LoadStateDict(Index, state, strict);
}

using TorchSharp;

namespace EmaGen;

/// <summary>
/// One profile of an <see cref="EmaManager{TModel}"/>: a full set of shadows with its own schedule. The manager updates
/// every profile in one pass; a dense profile can also be copied or swapped into a model.
/// A single-profile manager has one profile with an empty name.
/// </summary>
public sealed class EmaProfile<TModel> : EmaProfileBase where TModel : torch.nn.Module, IEmaTracked<TModel>
{
    internal EmaProfile(EmaManager<TModel> manager, int index, string name, EmaSchedule schedule)
        : base(manager, index, name, schedule)
    {
        Manager = manager;
    }

    /// <summary>The manager this profile belongs to.</summary>
    public EmaManager<TModel> Manager { get; }

    /// <summary>Copies this profile's averaged weights into <paramref name="model"/>.</summary>
    public void CopyTo(TModel model) => Manager.CopyTo(Index, model);

    /// <summary>Puts this profile's weights into <paramref name="model"/> until the returned object is disposed (see <see cref="EmaManager{TModel}.SwapInto(TModel)"/>).</summary>
    public EmaWeightSwap SwapInto(TModel model) => Manager.SwapInto(Index, model);

    /// <summary>Switch EMA with this profile's weights (see <see cref="EmaManager{TModel}.SwitchInto(TModel, double)"/>).</summary>
    public void SwitchInto(TModel model, double blend = 1.0) => Manager.SwitchInto(Index, model, blend);
}

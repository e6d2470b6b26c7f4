namespace EmaGen;

/// <summary>What an update does with a NaN or an infinity (<see cref="EmaOptions.NonFinite"/>).</summary>
public enum NonFinitePolicy
{
    /// <summary>
    /// The default. A non-finite parameter element leaves its shadow element as it was; a non-finite shadow element
    /// (say from an uninitialised module) takes the parameter's value when that is finite. Everything else is averaged
    /// as usual, bit for bit. The step's <see cref="EmaStepReport"/> counts and names both.
    /// </summary>
    KeepAndHeal,

    /// <summary>
    /// Any non-finite parameter element makes <c>Update</c> throw a <see cref="System.NotFiniteNumberException"/>
    /// naming the tensor, before any profile is written (the step does not advance). Non-finite shadows are healed as
    /// with <see cref="KeepAndHeal"/>.
    /// </summary>
    Throw,

    /// <summary>No check: a non-finite parameter blends into the shadow (NaN stays NaN), as before the guard existed.</summary>
    Allow,
}

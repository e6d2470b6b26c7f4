namespace EmaGen;

/// <summary>
/// The names of EmaGen's own values in a checkpoint, <c>{prefix}_emagen.{name}</c>: every reader and writer of EMA
/// checkpoints, post-hoc snapshots and post-hoc outputs builds its keys here, so a key is spelled in one place
/// (docs/checkpoint-layout.md lists them).
/// </summary>
internal static class CheckpointKeys
{
    /// <summary>The segment that starts every EmaGen value under a prefix; profile names may not start with it.</summary>
    public const string Segment = "_emagen.";

    public const string Format = "format";
    public const string Step = "step";
    /// <summary>The configured constant decay (<c>EmaOptions.Decay</c>; NaN where there is none, as in a synthesised post-hoc EMA). Checkpoints written before <see cref="CurrentDecay"/> existed stored a named profile's current decay here.</summary>
    public const string Decay = "decay";
    /// <summary>The decay the profile's last update applied (NaN before its first update); restored by a load.</summary>
    public const string CurrentDecay = "current_decay";
    public const string Schedule = "schedule";
    public const string Profiles = "profiles";
    /// <summary>Tied weights: a profile's other names of a tensor stored once under its first name, as comma-separated <c>alias=owner</c> pairs (absent when nothing is tied).</summary>
    public const string Aliases = "aliases";
    /// <summary>A BEMA profile's EMA, tensors <c>{prefix}_emagen.bema_ema.{name}</c> (its usual keys hold the bias-corrected weights).</summary>
    public const string BemaEma = "bema_ema";
    /// <summary>A BEMA profile's θ₀ (the weights at its last copy step), tensors <c>{prefix}_emagen.bema_anchor.{name}</c> in the parameters' dtype.</summary>
    public const string BemaTheta0 = "bema_anchor";
    /// <summary>A BEMA profile's α of its last update (0 before it).</summary>
    public const string BemaAlpha = "bema_alpha";
    public const string Gamma = "gamma";
    public const string PostHoc = "posthoc";
    /// <summary>The name filters (<c>EmaOptions.Include</c>/<c>Exclude</c>) of a filtered manager; absent when there are none.</summary>
    public const string Filters = "filters";
    /// <summary>The samples clock (<c>Update(model, samples)</c>): training samples seen; absent on the step clock.</summary>
    public const string Samples = "samples";
    /// <summary>The samples clock: the samples seen at the profile's last update (below <see cref="Samples"/> only for an <c>every</c> profile between updates).</summary>
    public const string SamplesAtUpdate = "samples_at_update";

    /// <summary><c>{prefix}_emagen.{name}</c>; <paramref name="prefix"/> is empty or ends with a dot.</summary>
    public static string Of(string prefix, string name) => prefix + Segment + name;
}

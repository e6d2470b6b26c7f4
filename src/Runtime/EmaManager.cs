using System.Collections.Generic;
using System.Linq;
using System.Threading.Tasks;
using EmaGen.Dcp;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// Keeps an exponential moving average of a tracked model's trainable parameters:
/// <c>ema = decay * ema + (1 - decay) * param</c> after every optimizer step. Shadows live on the parameters' device,
/// in one contiguous buffer per (device, shadow dtype, parameter dtype) group; bf16/fp16 parameters get fp32 shadows
/// unless <see cref="EmaOptions.LowPrecisionShadow"/>. The typed shadow tree is the generated extension property
/// <c>Shadow</c> (for example <c>ema.Shadow.fc1.weight</c>).
/// With <see cref="EmaOptions.Profiles"/> the manager keeps several shadow sets with their own schedules, written in one
/// pass over the parameters; <see cref="Profiles"/> gives each one's typed shadow, export and swap, and the manager's own
/// shadow members act on the first profile. This is <see cref="EmaManagerBase{TModel}"/> with every tensor whole, plus
/// what only whole shadows allow: copying and swapping them into a model.
/// </summary>
/// <typeparam name="TModel">An <see cref="EmaTrackedAttribute"/> module class.</typeparam>
public sealed class EmaManager<TModel> : EmaManagerBase<TModel> where TModel : torch.nn.Module, IEmaTracked<TModel>
{
    /// <summary>Binds to <paramref name="model"/> with a constant <paramref name="decay"/>.</summary>
    /// <exception cref="System.ArgumentOutOfRangeException"><paramref name="decay"/> is outside [0, 1].</exception>
    public EmaManager(TModel model, double decay = EmaOptions.DefaultDecay)
        : this(model, new EmaOptions { Decay = decay })
    {
    }

    /// <summary>Binds to <paramref name="model"/>: records its parameters and copies the trainable ones into fresh shadows.</summary>
    /// <exception cref="System.ArgumentOutOfRangeException">The decay or thread count is out of range.</exception>
    public EmaManager(TModel model, EmaOptions options)
        : base(model, options, new RankInfo(0, 1), globalShapes: null, canPack: true,
            (manager, k, profile) => new EmaProfile<TModel>((EmaManager<TModel>)manager, k, profile.Name, profile.Schedule))
    {
    }

    /// <summary>The profiles, in <see cref="EmaOptions.Profiles"/> order (one unnamed profile when that is not set).</summary>
    public IReadOnlyList<EmaProfile<TModel>> Profiles => field ??= ProfileList.Cast<EmaProfile<TModel>>().ToArray();

    /// <summary>The profile named <paramref name="name"/>.</summary>
    /// <exception cref="KeyNotFoundException">No profile has that name.</exception>
    public EmaProfile<TModel> Profile(string name) => (EmaProfile<TModel>)ProfileNamed(name);

    /// <summary>
    /// Writes the shadows as a PyTorch Distributed Checkpoint folder: each shadow under <c>{prefix}{name}</c> (one full
    /// chunk), plus the manager's own state as values under <c>{prefix}_emagen.step</c>, <c>.decay</c>,
    /// <c>.schedule</c> and <c>.format</c>. With named profiles each profile is such a subtree under
    /// <c>{prefix}{profile}.</c> (so one profile loads on its own with that prefix), and <c>{prefix}_emagen.profiles</c>
    /// lists them. The folder replaces a previous checkpoint at <paramref name="directory"/> only once complete.
    /// </summary>
    /// <param name="directory">The checkpoint folder (created or replaced).</param>
    /// <param name="prefix">Key prefix, so the EMA can share a key space with model and optimizer state (PyTorch style: <c>"ema."</c>).</param>
    /// <param name="options">Writer options (naming for older PyTorch, files per rank).</param>
    public void Save(string directory, string prefix = EmaCheckpoint.DefaultPrefix, DcpWriteOptions? options = null)
    {
        ThrowIfDisposed();
        ThrowIfSwapped();
        SaveNow(prefix, state => TensorChunks.OneRank(directory, WholeTensors(state), options));
    }

    /// <summary>
    /// <see cref="Save"/> with only a copy on the calling thread, like PyTorch's <c>dcp.async_save</c>: the shadows are
    /// copied into staging buffers laid out like the shadows (kept for the next call: one more EMA-sized allocation per
    /// profile), then the write, fsync and folder swap run on a background task while training and updates go on. The
    /// checkpoint holds the state at the call; the task completes when it is committed and carries any failure, and a
    /// failed write leaves the previous checkpoint in place. A call made while the previous write still runs first
    /// waits for it.
    /// </summary>
    public Task SaveAsync(string directory, string prefix = EmaCheckpoint.DefaultPrefix, DcpWriteOptions? options = null) =>
        SaveInBackground(prefix, state => TensorChunks.OneRank(directory, WholeTensors(state), options));

    // A dense manager's boxes are whole tensors: each is written as one full chunk.
    private static IEnumerable<KeyValuePair<string, object?>> WholeTensors(List<KeyValuePair<string, object?>> state) =>
        state.Select(kv => kv.Value switch
        {
            DcpShard shard => new KeyValuePair<string, object?>(kv.Key, shard.Local),
            DeferredShard deferred => new KeyValuePair<string, object?>(kv.Key, deferred.Later),
            _ => kv,
        });

    /// <summary>Caller-owned copies of every shadow (first profile), keyed by parameter name, in <c>named_parameters()</c> order.</summary>
    public Dictionary<string, torch.Tensor> StateDict() => ProfileList[0].StateDict();

    /// <summary>Copies <paramref name="state"/> into the shadows of the first profile (see <see cref="EmaProfileBase.LoadStateDict"/>).</summary>
    /// <exception cref="System.ArgumentException">Missing or unexpected names (strict), or a shape or dtype mismatch, or a null tensor.</exception>
    public void LoadStateDict(IReadOnlyDictionary<string, torch.Tensor> state, bool strict = true) => ProfileList[0].LoadStateDict(state, strict);

    /// <summary>
    /// Copies the averaged weights into <paramref name="model"/> (the trained model itself, or a second instance of the
    /// same class, e.g. for evaluation or export). Parameters without a shadow are left as they are.
    /// </summary>
    public void CopyTo(TModel model) => CopyTo(0, model);

    internal void CopyTo(int profile, TModel model)
    {
        if (IsBiasCorrected(profile)) Correction.WakeAhead();
        var pairs = ShadowPairs(model, profile);
        using var _ = torch.no_grad();
        if (IsBiasCorrected(profile))
        {
            // A BEMA profile's weights, formed straight into the model in one pass.
            WriteReadOut(profile, i => pairs[i].Shadow, i => pairs[i].Target);
            return;
        }
        foreach (var (target, shadow) in pairs) InPlace.Release(target.copy_(shadow), target);
    }

    /// <summary>
    /// Puts the EMA weights into <paramref name="model"/> until the returned object is disposed, then restores the
    /// model's weights bit for bit (also on exceptions): <c>using (ema.SwapInto(model)) { Evaluate(model); }</c>.
    /// While a swap is active, <see cref="EmaManagerBase{TModel}.Update(TModel)"/>, saving and loading throw.
    /// </summary>
    public EmaWeightSwap SwapInto(TModel model) => SwapInto(0, model);

    internal EmaWeightSwap SwapInto(int profile, TModel model) => BeginSwap(model, profile);

    /// <summary>
    /// Switch EMA (SEMA): moves <paramref name="model"/>'s own weights toward the first profile's averaged weights,
    /// <c>θ ← θ + blend·(ema − θ)</c> (blend 1 copies them in), in place and in one pass over the averaged tensors, so
    /// training continues from there; unlike <see cref="SwapInto(TModel)"/> nothing is restored. Call it at an epoch
    /// end, or set <see cref="EmaOptions.SwitchEvery"/>. An fp32 or bf16 model (fp32 shadows) takes no temporary tensor
    /// and allocates no managed memory; other dtypes are converted tensor by tensor. <see cref="EmaStepReport.Switched"/>
    /// tells it in <see cref="EmaManagerBase{TModel}.LastUpdate"/>.
    /// </summary>
    /// <exception cref="System.ArgumentOutOfRangeException"><paramref name="blend"/> is outside (0, 1].</exception>
    public void SwitchInto(TModel model, double blend = 1.0) => SwitchInto(0, model, blend);

    /// <summary>The step after whose update the model was last switched to the EMA (<see cref="SwitchInto(TModel, double)"/> or <see cref="EmaOptions.SwitchEvery"/>); 0 when never.</summary>
    public long LastSwitchStep { get; private set; }

    internal void SwitchInto(int profile, TModel model, double blend)
    {
        EmaOptions.CheckBlend(blend, nameof(blend));
        CheckModel(model);
        // One pass over the averaged tensors, written in place: θ ← θ + blend·(w − θ), w the profile's weights as a
        // reader gets them, θ the model's own (also θ of a BEMA profile's correction here).
        for (int i = 0; i < ItemCount; i++)
        {
            var target = LiveTensor(i);
            QueueReadOut(profile, i, ShadowOf(profile, i), target, target, blend);
        }
        Correction.Run();
        LastSwitchStep = Step;
        LastUpdate.Switched = true;
    }

    private protected override void AfterStep(TModel model)
    {
        if (Options.SwitchEvery is { } k && Step % k == 0) SwitchInto(0, model, Options.SwitchBlend);
    }
}

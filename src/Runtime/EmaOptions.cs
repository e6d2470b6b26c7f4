using System;
using System.Collections.Generic;

namespace EmaGen;

/// <summary>Settings of an <see cref="EmaManager{TModel}"/>.</summary>
public sealed class EmaOptions
{
    /// <summary>Default decay, as in the NeMo Automodel <c>EMAManager</c> EmaGen grew from.</summary>
    public const double DefaultDecay = 0.9999;

    /// <summary>
    /// Weight of the old average in <c>ema = decay * ema + (1 - decay) * param</c>; must lie in [0, 1].
    /// 0 copies the parameters on every update, 1 never moves the shadow.
    /// </summary>
    public double Decay { get; init; } = DefaultDecay;

    /// <summary>
    /// How the decay changes with the step (warmup, half-life, power function, start-after, update-every). When null,
    /// <see cref="Decay"/> is used at every step.
    /// </summary>
    public EmaSchedule? Schedule { get; init; }

    internal EmaSchedule EffectiveSchedule => Schedule ?? new ConstantSchedule(Decay);

    /// <summary>
    /// Several EMA profiles at once (say σ_rel 0.05 and 0.10, or decays 0.999 and 0.9999), each with its own shadows and
    /// schedule, all written in one pass that reads every parameter once. When set, <see cref="Decay"/> and
    /// <see cref="Schedule"/> are not used (setting <see cref="Schedule"/> too is an error), the manager's own members
    /// act on the first profile, and checkpoints keep each profile under <c>{prefix}{name}.</c>.
    /// </summary>
    public IReadOnlyList<EmaProfileOptions>? Profiles { get; init; }

    /// <summary>
    /// Keep bf16/fp16 shadows for bf16/fp16 parameters. Off by default: the shadow is fp32, because a low-precision
    /// shadow rounds small updates (1 - decay of a difference) away entirely and stops moving.
    /// </summary>
    public bool LowPrecisionShadow { get; init; }

    /// <summary>
    /// Also keep shadows of the model's buffers (BatchNorm running statistics, <c>Tensor</c> fields), named as in
    /// <c>named_buffers()</c> and included in <c>StateDict()</c>. Floating-point buffers are averaged like parameters;
    /// integer and bool buffers (say <c>num_batches_tracked</c>) are copied, never averaged. Off by default, as in the
    /// seed: only trainable parameters are tracked.
    /// </summary>
    public bool TrackBuffers { get; init; }

    /// <summary>
    /// Glob patterns (<c>*</c> any run of characters, dots included; <c>?</c> one) over the <c>named_parameters()</c>
    /// names (and <c>named_buffers()</c> names when <see cref="TrackBuffers"/> is on): when set, only matching tensors are
    /// averaged (say <c>["*lora_*"]</c> for adapters only). Filtered-out tensors have no shadow and are not saved. A
    /// pattern that matches no name of the model is an error naming it.
    /// </summary>
    public IReadOnlyList<string>? Include { get; init; }

    /// <summary>Glob patterns of names never averaged (say <c>["*.bias", "text_encoder.*"]</c>); applied after <see cref="Include"/>.</summary>
    public IReadOnlyList<string>? Exclude { get; init; }

    /// <summary>
    /// Re-point the model's trainable parameters into one flat buffer per (device, dtype) group, laid out like the
    /// shadow arena, so that an update is one fused pass per group on any device (as FSDP flat parameters and apex's
    /// multi-tensor apply do). The <c>Parameter</c> objects stay the same (TorchSharp's <c>set_</c>), so optimizers built
    /// before or after, <c>state_dict</c>/<c>load_state_dict</c>, swaps and checkpoints keep working.
    /// <para>
    /// Default (null): on for <see cref="EmaManager{TModel}"/>, off for <see cref="ShardedEmaManager{TModel}"/>. A group is
    /// left unpacked when any of its parameters shares storage with another tensor (a view of the trainer's own flat
    /// buffer, tied weights): re-pointing it would break that aliasing. If a parameter is later re-pointed elsewhere
    /// (say by <c>to(device)</c>), updates fall back to the per-tensor path and stay correct; the manager says so once,
    /// in <see cref="EmaManagerBase{TModel}.UpdatePath"/> and through <see cref="OnSlowPath"/>. <c>false</c> never packs.
    /// </para>
    /// <para>
    /// The per-step check reads each packed parameter through a LibTorch handle of its own, which keeps that
    /// parameter's native tensor (and what it holds, such as its gradient) alive after the model is disposed, until the
    /// manager is disposed or next checks another model (<c>CopyTo</c>, <c>SwapInto</c>). A packed parameter disposed
    /// while the model still holds it is not reported by the update (the model's own forward pass fails on it).
    /// </para>
    /// </summary>
    public bool? PackParameters { get; init; }

    /// <summary>
    /// Called once, on the updating thread, when a manager's update first runs slower than it was built to: a packed
    /// group whose parameters no longer alias its flat buffer. The message names a parameter and what to do. Also
    /// available afterwards as <see cref="EmaManagerBase{TModel}.UpdatePath"/>.
    /// </summary>
    public Action<string>? OnSlowPath { get; init; }

    /// <summary>
    /// What an update does with NaN and infinite values. Default <see cref="NonFinitePolicy.KeepAndHeal"/>: a non-finite
    /// parameter element leaves its shadow element as it was, a non-finite shadow element heals from a finite parameter,
    /// so one bad step (an fp16 overflow, a bad batch) does not poison the average. Counted in
    /// <see cref="EmaManagerBase{TModel}.LastUpdate"/>.
    /// </summary>
    public NonFinitePolicy NonFinite { get; init; } = NonFinitePolicy.KeepAndHeal;

    /// <summary>
    /// Measure each profile's RMS distance to the live weights in the update's own pass
    /// (<see cref="EmaStepReport.RmsDistance"/>). Off by default; docs/performance.md has its cost.
    /// </summary>
    public bool ReportDistance { get; init; }

    /// <summary>
    /// Called once, on the updating thread, at the first update that meets a non-finite parameter element, with that
    /// update's report (the tensors it names). On the TorchSharp-op path (CUDA) the counts stay on the device, so the
    /// call comes when the report is first read after that update.
    /// </summary>
    public Action<EmaStepReport>? OnFirstNonFinite { get; init; }

    /// <summary>
    /// Test-only: every update goes through the TorchSharp-op path (what a CUDA run executes: one blend per packed
    /// group, else per tensor) even on the CPU, so tests and the update benchmark can exercise it without a device.
    /// </summary>
    internal bool ForceTorchOps { get; init; }

    /// <summary>
    /// Benchmark-only: the CPU update uses helper threads of its own even where it could run on LibTorch's OpenMP team
    /// (what the update did before it borrowed that team; the benchmark prints both).
    /// </summary>
    internal bool OwnUpdateThreads { get; init; }

    /// <summary>
    /// Threads the CPU update may use for large models (default: every processor). Updates below about a million
    /// elements always run on the calling thread, where waking helpers would cost more than it saves.
    /// </summary>
    public int? Threads { get; init; }

    /// <summary>
    /// Switch EMA (SEMA; ema-pytorch's <c>update_model_with_ema_every</c>): every this many steps, right after the
    /// update, the dense manager moves the trained model toward its first profile's weights by
    /// <see cref="SwitchBlend"/> and training goes on from there (see <c>EmaManager.SwitchInto</c>). Null: never.
    /// The sharded manager refuses it: each rank holds only its boxes.
    /// </summary>
    public int? SwitchEvery { get; init; }

    /// <summary>How far a switch moves the model toward the EMA, in (0, 1]: <c>θ ← θ + b·(ema − θ)</c>; 1 (the default) copies the EMA in.</summary>
    public double SwitchBlend { get; init; } = 1.0;

    internal void Validate()
    {
        if (SwitchEvery is < 1) throw new ArgumentOutOfRangeException(nameof(SwitchEvery), SwitchEvery, "SwitchEvery must be at least 1 step.");
        CheckBlend(SwitchBlend, nameof(SwitchBlend));
        if (!(Decay >= 0.0 && Decay <= 1.0))
        {
            throw new ArgumentOutOfRangeException(nameof(Decay), Decay, "EMA decay must lie in [0, 1].");
        }
        if (Profiles is not null)
        {
            if (Profiles.Count == 0) throw new ArgumentException("Profiles, when set, must name at least one profile.", nameof(Profiles));
            if (Schedule is not null) throw new ArgumentException("Set either Schedule or Profiles, not both.", nameof(Profiles));
            var names = new HashSet<string>(StringComparer.Ordinal);
            foreach (var profile in Profiles)
            {
                ArgumentNullException.ThrowIfNull(profile, nameof(Profiles));
                profile.Validate();
                if (!names.Add(profile.Name)) throw new ArgumentException($"Two EMA profiles are named '{profile.Name}'.", nameof(Profiles));
            }
        }
        if (Threads is < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(Threads), Threads, "Threads must be at least 1.");
        }
    }

    internal static void CheckBlend(double blend, string name)
    {
        if (!(blend > 0 && blend <= 1)) throw new ArgumentOutOfRangeException(name, blend, "A switch blend must lie in (0, 1] (1 copies the EMA into the model).");
    }

    internal int EffectiveThreads => Threads ?? Environment.ProcessorCount;
}

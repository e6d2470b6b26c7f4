using System;
using System.Collections.Generic;
using System.Linq;
using TorchSharp;

namespace EmaGen;

// The step, one way: the profiles' decays computed once and handed down as values; check the live model's slots
// (LiveSlots), queue every unit of work into its backend, run the backends, advance. What a step needs is decided at
// bind: which backend each arena group takes, and where each packed parameter must be. A unit is a whole packed group
// while every parameter still aliases its flat buffer, otherwise one averaged box (a whole tensor when dense, this
// rank's box when sharded). Raw CPU kernels take what they can (RawCpuBackend); the rest, and every group off the CPU,
// go through TorchSharp ops (TorchOpsBackend).
public abstract partial class EmaManagerBase<TModel>
{
    private LiveSlots _live = null!;
    private CpuWorkerPool? _pool;
    private RawCpuBackend _raw = null!;
    private TorchOpsBackend _torch = null!;
    private Action<string>? _onSlowPath;
    // Per item: its group and where its parameter's data must be while the group is packed (zero when unpacked).
    private int[] _groupOfItem = null!;
    private IntPtr[] _packedPointer = null!;
    private bool[] _rawCapable = null!;
    // Per group: whether it takes TorchSharp ops, and per step whether it runs as one unit.
    private bool[] _torchGroup = null!;
    private bool[] _packedGroup = null!;
    // The profiles' schedules, read by every step without going through the profile objects.
    private EmaSchedule[] _schedules = null!;
    private bool[] _wholeGroup = null!;
    // The LiveSlots.Changes that _wholeGroup was decided at (never before the first step), and whether every group is whole.
    private int _wholeGroupsDecidedAt = -1;
    private bool _allGroupsWhole;
    private double[] _stepDecays = null!;
    private string? _slowPathReason;
    private int _lastRawGroups, _lastRawTensors, _lastTorchGroups, _lastTorchTensors;
    private EmaWeightSwap? _activeSwap;
    private NonFinitePolicy _nonFinite;
    private EmaStepReport _report = null!;
    private StepTally _tally = null!;

    // Decides, once, how every step runs (called at the end of binding, when the arenas exist).
    private void PlanSteps(EmaOptions options)
    {
        _onSlowPath = options.OnSlowPath;
        var arena = _arenas[0];
        var groups = arena.Groups;
        var watched = new bool[_slots.Length];
        foreach (var item in _items) watched[item.Slot] = true;
        // A tied weight's other names are followed too: each must stay the owner's tensor.
        foreach (var (slot, _) in _aliases) watched[slot] = true;
        _groupOfItem = new int[_items.Length];
        _packedPointer = new IntPtr[_items.Length];
        _rawCapable = new bool[_items.Length];
        var packedAt = new IntPtr[_slots.Length];
        long elements = 0;
        for (int i = 0; i < _items.Length; i++)
        {
            _groupOfItem[i] = arena.GroupOf(i);
            _rawCapable[i] = _items[i].RawCapable && !options.ForceTorchOps;
            elements += _items[i].Numel;
            // Device addresses compare the same way as host ones.
            if (groups[_groupOfItem[i]].PackedParameters is { } packed)
            {
                _packedPointer[i] = LiveSlots.DataPointer(packed) + (nint)(arena.OffsetOf(i) * DTypes.SizeOf(_items[i].Info.DType));
                packedAt[_items[i].Slot] = _packedPointer[i];
            }
        }
        foreach (var (slot, item) in _aliases) packedAt[slot] = _packedPointer[item];
        _live = new LiveSlots(_slots, watched, _aliases.Select(a => (a.Slot, _items[a.Item].Slot)).ToArray(), packedAt);
        _schedules = _profiles.Select(p => p.Schedule).ToArray();
        _packedGroup = groups.Select(g => g.PackedParameters is not null).ToArray();
        _torchGroup = new bool[groups.Count];
        _wholeGroup = new bool[groups.Count];
        for (int g = 0; g < groups.Count; g++) _torchGroup[g] = options.ForceTorchOps || groups[g].Device.type != DeviceType.CPU;
        _stepDecays = new double[_profiles.Length];
        int threads = options.EffectiveThreads;
        if (threads > 1 && elements >= RawCpuBackend.ParallelThreshold) _pool = new CpuWorkerPool(threads, options.OwnUpdateThreads);
        _nonFinite = options.NonFinite;
        bool guard = _nonFinite != NonFinitePolicy.Allow;
        _raw = new RawCpuBackend(_arenas, _items, _live, _pool, guard, options.ReportDistance);
        _torch = new TorchOpsBackend(_arenas, _items, _live, guard, options.ReportDistance);
        _tally = new StepTally(_profiles.Length);
        _report = new EmaStepReport(_profiles.Select(p => p.Name).ToArray(), _tally, options.ReportDistance, options.OnFirstNonFinite);
    }

    /// <summary>
    /// Applies <c>ema = decay * ema + (1 - decay) * param</c> to every averaged tensor (this rank's box of it when
    /// sharded), in place, recording no gradients, for every profile whose schedule updates at this step, in one pass
    /// over the parameters. The model is first checked against the layout seen at construction; a mismatch throws before
    /// any shadow is written. On the CPU a steady-state update allocates no managed memory and creates no tensors.
    /// </summary>
    public void Update(TModel model) => Advance(model, 0);

    // One update on the step clock (samples 0) or the samples clock (samples > 0, see EmaManagerBase.Clock.cs).
    private void Advance(TModel model, long samples)
    {
        ArgumentNullException.ThrowIfNull(model);
        ThrowIfDisposed();
        ThrowIfSwapped();
        long step = Step + 1;
        var decays = _stepDecays;
        bool any = samples > 0 ? SampleDecays(step, samples, decays) : StepDecays(step, decays);
        _report.Begin(step, decays);
        if (any)
        {
            RunStep(model, decays);
            for (int k = 0; k < decays.Length; k++)
            {
                if (!double.IsNaN(decays[k])) _currentDecay[k] = decays[k];
            }
            if (_biasCorrected) AfterBiasCorrectedStep(decays, step);
        }
        if (samples > 0) AdvanceSamples(samples, decays);
        else _clock = EmaClock.Steps;
        Step = step;
        _report.End();
        AfterStep(model);
    }

    /// <summary>What a facade does once a step is done (the dense manager's Switch EMA).</summary>
    private protected virtual void AfterStep(TModel model)
    {
    }

    /// <summary>
    /// What the last <see cref="Update(TModel)"/> did (the step, each profile's decay, what the non-finite guard kept or healed,
    /// the distances when <see cref="EmaOptions.ReportDistance"/> is set); the same object, refilled by each update. After an
    /// update refused by <see cref="NonFinitePolicy.Throw"/> it describes that refused update: its step is one past
    /// <see cref="EmaManagerBase{TModel}.Step"/>, and counts the op path had not yet read from the device for the update before are gone.
    /// </summary>
    public EmaStepReport LastUpdate => _report;

    // Checks the model, then blends every averaged box into each profile whose decay is a number; throws, writing
    // nothing, when a slot does not match.
    private void RunStep(TModel model, double[] decays)
    {
        // On LibTorch's OpenMP team the check is a parallel region of its own (the caller walks, the other threads read
        // pointers); with helper threads of the pool's own, they wake while the model is checked, not when the kernels
        // are handed to them.
        _live.Check(model, _pool);
        int groups = _packedGroup.Length;
        // Which groups run whole follows from the live pointers and layouts alone: decided again only after they changed.
        if (_live.Changes != _wholeGroupsDecidedAt)
        {
            DecideWholeGroups();
            _wholeGroupsDecidedAt = _live.Changes;
        }
        _lastRawGroups = _lastRawTensors = _lastTorchGroups = _lastTorchTensors = 0;
        bool anyPackedBroken = false;
        for (int g = 0; g < groups; g++)
        {
            anyPackedBroken |= _packedGroup[g] && !_wholeGroup[g];
            if (!_wholeGroup[g]) continue;
            if (_torchGroup[g])
            {
                _torch.QueueGroup(g);
                _lastTorchGroups++;
            }
            else
            {
                _raw.QueueGroup(g);
                _lastRawGroups++;
            }
        }
        if (anyPackedBroken && _slowPathReason is null) NoteSlowPath();
        for (int i = 0; i < _items.Length && !_allGroupsWhole; i++)
        {
            int g = _groupOfItem[i];
            if (_wholeGroup[g] || _items[i].Numel == 0) continue;
            if (!_torchGroup[g] && RawOk(i))
            {
                _raw.QueueTensor(i);
                _lastRawTensors++;
            }
            else
            {
                _torch.QueueTensor(i);
                _lastTorchTensors++;
            }
        }
        bool torch = _lastTorchGroups + _lastTorchTensors > 0;
        if (_nonFinite == NonFinitePolicy.Throw) RefuseNonFinite(torch);
        _raw.Run(decays, _tally);
        // TorchSharp ops only run when something was queued for them (on the CPU, usually nothing).
        if (torch) _torch.Run(decays, _tally);
    }

    // Per group, whether every parameter still aliases the packed buffer where it was put and takes its group's kernel.
    private void DecideWholeGroups()
    {
        int groups = _packedGroup.Length;
        for (int g = 0; g < groups; g++) _wholeGroup[g] = _packedGroup[g];
        for (int i = 0; i < _items.Length; i++)
        {
            int g = _groupOfItem[i];
            // An empty tensor has no data pointer (LibTorch gives null) and nothing to average: it never breaks a group.
            if (_items[i].Numel == 0) continue;
            _wholeGroup[g] &= _packedPointer[i] != IntPtr.Zero && _packedPointer[i] == _live.Pointer(_items[i].Slot) && FitsWholeGroup(i, g);
        }
        _allGroupsWhole = Array.TrueForAll(_wholeGroup, whole => whole);
    }

    // The throw policy: a pre-scan of every queued parameter before any profile is written.
    private void RefuseNonFinite(bool torch)
    {
        int bad = _raw.FindNonFinite();
        if (bad < 0 && torch) bad = _torch.FindNonFinite();
        if (bad < 0) return;
        _raw.Discard();
        _torch.Discard();
        throw new NotFiniteNumberException(
            $"EMA update at step {Step + 1}: parameter '{_items[bad].Info.Name}' has a NaN or infinite element; no profile was written and the step did not advance (EmaOptions.NonFinite is Throw).");
    }

    private bool RawOk(int item) => _rawCapable[item] && _live.IsContiguous(_items[item].Slot);

    // Whether an item at its packed place can be blended in its group's one pass: laid out as packed (a tensor restrided
    // in place keeps its pointer, and a pass over the flat buffer would average the memory after it), and on the CPU of
    // a dtype the raw kernels take.
    private bool FitsWholeGroup(int item, int group) => _torchGroup[group] ? _live.IsContiguous(_items[item].Slot) : RawOk(item);

    // The first time a packed group does not run as one unit: say so once, naming a parameter.
    private void NoteSlowPath()
    {
        int culprit = -1;
        for (int i = 0; i < _items.Length; i++)
        {
            int g = _groupOfItem[i];
            if (!_packedGroup[g] || _wholeGroup[g] || _items[i].Numel == 0) continue;
            // A parameter that moved, else the first one the group's one pass cannot take (say one restrided in place).
            bool moved = _packedPointer[i] != _live.Pointer(_items[i].Slot);
            if (moved || (culprit < 0 && !FitsWholeGroup(i, g))) culprit = i;
            if (moved) break;
        }
        if (culprit < 0) return;
        string name = _items[culprit].Info.Name;
        var group = _arenas[0].Groups[_groupOfItem[culprit]];
        _slowPathReason = _packedPointer[culprit] != _live.Pointer(_items[culprit].Slot)
            ? $"parameter '{name}' no longer aliases its packed flat buffer (re-pointed after the EMA manager was built, say by to() or set_()); its group of {group.ShadowDType} shadows is updated tensor by tensor from now on. Build a new manager to pack again."
            : !_live.IsContiguous(_items[culprit].Slot)
            ? $"parameter '{name}' is no longer contiguous where packing put it (restrided in place, say by set_()); its packed group is updated tensor by tensor while it stays so."
            : $"parameter '{name}' cannot take the raw CPU kernel (its dtype); its packed group is updated tensor by tensor.";
        _onSlowPath?.Invoke(_slowPathReason);
    }

    /// <summary>
    /// Benchmark-only: the first group's flat shadow (first profile) and packed parameter buffer, zero where a buffer is
    /// not on the CPU or the group is not packed, and its elements (the limit's pass over the update's own memory).
    /// </summary>
    internal (IntPtr Shadow, IntPtr Parameters, long Elements) FirstGroupForBenchmark()
    {
        var group = _arenas[0].Groups[0];
        return (NativeTensor.CpuDataPointer(group.Shadow), group.PackedParameters is { } packed ? NativeTensor.CpuDataPointer(packed) : IntPtr.Zero, group.Elements);
    }

    /// <summary>Benchmark-only: the CPU kernels' guard switched on or off over this manager's own buffers (RMS off).</summary>
    internal void SetRawGuardForBenchmark(bool guard) => _raw.SetModeForBenchmark(guard, rms: false);

    /// <summary>Threads a CPU update uses (1 for small models or shards).</summary>
    public int UpdateThreads => _pool?.Parallelism ?? 1;

    /// <summary>
    /// How updates run, for a user checking that the fast path is taken: how many (device, dtype) groups are packed
    /// into one flat buffer and still intact at the last update, how many tensors went one by one, and why a group is
    /// not packed or fell back (see <see cref="EmaOptions.PackParameters"/>).
    /// </summary>
    public string UpdatePath
    {
        get
        {
            var groups = _arenas[0].Groups;
            int packed = 0;
            var notPacked = new List<string>();
            foreach (var g in groups)
            {
                if (g.PackedParameters is not null) packed++;
                else if (g.NotPackedReason is { } reason) notPacked.Add(reason);
            }
            var text = $"{groups.Count} group(s), {packed} packed; at the last update {_lastRawGroups} packed group(s) ran as one pass each and {_lastRawTensors} tensor(s) one by one";
            if (_pool is not null) text += _pool.RunsOnLibTorchTeam ? $"; on {_pool.Parallelism} threads of LibTorch's OpenMP team" : $"; on {_pool.Parallelism} threads of its own";
            if (_lastTorchGroups + _lastTorchTensors > 0) text += $"; through TorchSharp ops: {_lastTorchGroups} packed group(s) and {_lastTorchTensors} tensor(s)";
            if (notPacked.Count > 0) text += "; not packed: " + string.Join("; ", notPacked);
            if (_slowPathReason is not null) text += "; slow path: " + _slowPathReason;
            return text;
        }
    }

    // Each averaged tensor of `model` (checked against the layout, without waking the update threads) with profile
    // `profile`'s shadow, for copies and swaps; a tied tensor once.
    private protected (torch.Tensor Target, torch.Tensor Shadow)[] ShadowPairs(TModel model, int profile)
    {
        CheckModel(model);
        var pairs = new (torch.Tensor, torch.Tensor)[_items.Length];
        for (int i = 0; i < _items.Length; i++) pairs[i] = (_live.Tensor(_items[i].Slot)!, _arenas[profile][i]!);
        return pairs;
    }

    // Checks `model` against the layout for a copy, swap or switch, without waking the update threads.
    private protected void CheckModel(TModel model)
    {
        ArgumentNullException.ThrowIfNull(model);
        ThrowIfDisposed();
        ThrowIfSwapped();
        // Dynamic submodules are read afresh, so a parameter re-pointed inside one is followed (or reported).
        _live.RefreshDynamic();
        _live.Check(model, pool: null);
    }

    private protected int ItemCount => _items.Length;

    // After CheckModel: item `item`'s tensor in the checked model, and profile `profile`'s shadow of it.
    private protected torch.Tensor LiveTensor(int item) => _live.Tensor(_items[item].Slot)!;

    private protected torch.Tensor ShadowOf(int profile, int item) => _arenas[profile][item]!;

    // While a swap is active the shadow storage holds the model's own weights: updates, saves and loads wait for its end.
    private protected EmaWeightSwap BeginSwap(TModel model, int profile)
    {
        var pairs = ShadowPairs(model, profile).ToList();
        var targets = pairs.Select(p => p.Target).ToArray();
        // A swap re-points tensor objects: another object over a tied tensor's memory is re-pointed with its owner.
        foreach (var (slot, item) in _aliases)
        {
            var alias = _live.Tensor(slot)!;
            if (!ReferenceEquals(alias, _live.Tensor(_items[item].Slot))) pairs.Add((alias, _arenas[profile][item]!));
        }
        // A BEMA profile's corrected weights are formed straight into the parameters once the swap has saved them.
        bool corrected = IsBiasCorrected(profile);
        var swap = new EmaWeightSwap(pairs.ToArray(), () => _activeSwap = null, saveOnly: corrected);
        if (corrected)
        {
            try
            {
                using var _ = torch.no_grad();
                WriteReadOut(profile, i => _arenas[profile][i]!, i => targets[i]);
            }
            catch
            {
                swap.Dispose();
                throw;
            }
        }
        _activeSwap = swap;
        return swap;
    }

    private protected void ThrowIfSwapped()
    {
        if (_activeSwap is not null)
        {
            throw new InvalidOperationException("The EMA weights are swapped into a model; dispose the swap before updating, saving or loading.");
        }
    }
}

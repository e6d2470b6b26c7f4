using System;
using TorchSharp;

namespace EmaGen;

// Which tensors of a packed group healed, for the report (the raw kernels name them as they go; the op path counts a
// group's healed elements on the device, one count per group). Under the guard a step keeps a non-finite shadow
// element or heals it, never makes one: a shadow element is non-finite only because it was written so (bound from a
// non-finite parameter, loaded, or set by the caller). So the tensors that can heal are read from the shadows before
// the first step after a bind or load (one read back per group and profile, and per tensor of a group that holds a
// non-finite element), and when a report counts healed elements in a group those tensors are read again: each whose
// count of non-finite elements fell is named. Where a heal may have gone by unnamed (a step whose counts nobody read,
// a step the group ran tensor by tensor), the next heal in that group is named by the group and the tensors are read
// afresh. A shadow the caller sets non-finite between steps is not followed (its heal is named by its group).
internal sealed partial class TorchOpsBackend
{
    // Per profile and item, the non-finite shadow elements last read; per group whether that was read since the shadows
    // were last written, and whether a heal may have gone by since.
    private long[][]? _nonFiniteShadow;
    private bool[]? _shadowsRead;
    private bool[]? _baselineStale;
    // The last guarded step's counts are on the device and no report has read them yet.
    private bool _healingUnread;

    /// <summary>The shadows were written outside an update (a load): which can heal is read again before the next step.</summary>
    public void ShadowsWritten()
    {
        if (_shadowsRead is not null) Array.Clear(_shadowsRead);
    }

    // Before a guarded step: a step whose counts were dropped unread may have healed what the baseline still counts.
    private void BeginHealing()
    {
        if (_healingUnread && _baselineStale is not null) Array.Fill(_baselineStale, true);
        _healingUnread = false;
        if (_groupCount > 0) ReadHealableShadows();
    }

    private void HealingBaselineStale(int g)
    {
        if (_baselineStale is not null) _baselineStale[g] = true;
    }

    // Each queued group not read since its shadows were last written.
    private void ReadHealableShadows()
    {
        _nonFiniteShadow ??= CreateCounts();
        _shadowsRead ??= new bool[_groups.Length];
        _baselineStale ??= new bool[_groups.Length];
        for (int q = 0; q < _groupCount; q++)
        {
            int g = _groups[q];
            if (_shadowsRead[g]) continue;
            _shadowsRead[g] = true;
            _baselineStale[g] = false;
            for (int k = 0; k < _arenas.Length; k++)
            {
                bool finite = NonFiniteElements(_arenas[k].Groups[g].Shadow) == 0;
                for (int i = 0; i < _items.Length; i++)
                {
                    if (_arenas[0].GroupOf(i) == g) _nonFiniteShadow[k][i] = finite ? 0 : NonFiniteElements(_arenas[k][i]!);
                }
            }
        }
    }

    private long[][] CreateCounts()
    {
        var counts = new long[_arenas.Length][];
        for (int k = 0; k < counts.Length; k++) counts[k] = new long[_items.Length];
        return counts;
    }

    // At a report read that counts healed elements in group `g`: names each tensor whose non-finite shadow elements fell.
    private bool NameHealedInGroup(StepTally tally, int g)
    {
        if (_nonFiniteShadow is null || _baselineStale is null) return false;
        bool stale = _baselineStale[g];
        _baselineStale[g] = false;
        bool found = false;
        for (int i = 0; i < _items.Length; i++)
        {
            if (_arenas[0].GroupOf(i) != g) continue;
            bool fell = false;
            for (int k = 0; k < _arenas.Length; k++)
            {
                if (_nonFiniteShadow[k][i] == 0) continue;
                long now = NonFiniteElements(_arenas[k][i]!);
                fell |= now < _nonFiniteShadow[k][i];
                _nonFiniteShadow[k][i] = now;
            }
            if (!fell || stale) continue;
            tally.AddName(healed: true, _items[i].Info.Name);
            found = true;
        }
        return found;
    }
}

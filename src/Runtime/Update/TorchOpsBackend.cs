using TorchSharp;

namespace EmaGen;

/// <summary>
/// The backend for tensors on other devices, tensors the raw kernels do not take (non-contiguous layouts, dtype pairs
/// without a kernel) and everything with <see cref="EmaOptions.ForceTorchOps"/>: <see cref="TorchBlend"/> per queued
/// unit and active profile, on the tensors' own device. A packed group is one blend over its flat buffers, so a CUDA
/// model pays a few launches per (device, dtype) group and profile, not per tensor; the decay is a scalar argument,
/// never read back, so there is no host synchronisation.
/// </summary>
internal sealed class TorchOpsBackend : IUpdateBackend
{
    private readonly UpdateTargets _targets;
    private readonly UpdateWorkList _steps;
    private readonly int[] _groups;
    private readonly int[] _items;
    private int _groupCount;
    private int _itemCount;

    /// <param name="targets">The shadows and live tensors, in the engine's numbering.</param>
    /// <param name="steps">The step's active profiles and decays (shared with the raw backend's work list).</param>
    public TorchOpsBackend(UpdateTargets targets, UpdateWorkList steps)
    {
        _targets = targets;
        _steps = steps;
        _groups = new int[targets.Arenas[0].Groups.Count];
        _items = new int[targets.Count.Length];
    }

    public void QueueGroup(int group) => _groups[_groupCount++] = group;

    public void QueueTensor(int item) => _items[_itemCount++] = item;

    public void Run()
    {
        if (_groupCount == 0 && _itemCount == 0) return;
        try
        {
            // no_grad allocates a guard object, so it is only opened when there is something to blend.
            using var _ = torch.no_grad();
            for (int a = 0; a < _steps.ActiveCount; a++)
            {
                int k = _steps.ActiveProfile(a);
                double decay = _steps.DecayOf(k);
                for (int i = 0; i < _groupCount; i++)
                {
                    int g = _groups[i];
                    TorchBlend.Apply(_targets.Arenas[k].Groups[g].Shadow, _targets.Arenas[0].Groups[g].PackedParameters!, decay);
                }
                for (int i = 0; i < _itemCount; i++)
                {
                    int item = _items[i];
                    TorchBlend.Apply(_targets.Shadow[k][item], _targets.Tensor(item), decay);
                }
            }
        }
        finally
        {
            _groupCount = 0;
            _itemCount = 0;
        }
    }
}

using System;

namespace EmaGen;

/// <summary>
/// One way of writing a step's blends: the raw-memory CPU kernels (<see cref="RawCpuBackend"/>) or TorchSharp ops on
/// the tensors' own device (<see cref="TorchOpsBackend"/>, what a CUDA model runs). The manager picks one per arena
/// group when it binds, by the group's device (and <see cref="EmaOptions.ForceTorchOps"/>, the CPU stand-in for CUDA in
/// tests); each step it queues each unit of work into its group's backend, then runs them with the profiles' decays.
/// A unit is a whole packed group (its flat parameter buffer against each written profile's flat shadow) or one
/// averaged box. A new backend (say, a fused CUDA kernel) implements these three methods and is chosen in
/// <c>EmaManagerBase.PlanSteps</c>.
/// </summary>
internal interface IUpdateBackend
{
    /// <summary>Queues packed group <paramref name="group"/> as one unit, for every written profile.</summary>
    void QueueGroup(int group);

    /// <summary>Queues averaged box <paramref name="item"/> on its own, for every written profile.</summary>
    void QueueTensor(int item);

    /// <summary>
    /// Writes every queued unit into each profile whose decay is a number (NaN: not written this step), under the
    /// non-finite guard when it is on, adding what it found to <paramref name="tally"/>; then forgets them.
    /// </summary>
    void Run(ReadOnlySpan<double> decays, StepTally tally);

    /// <summary>The throw policy's pre-scan: the first queued item with a non-finite parameter element, or −1; writes nothing.</summary>
    int FindNonFinite();

    /// <summary>Forgets the queued units without writing them.</summary>
    void Discard();
}

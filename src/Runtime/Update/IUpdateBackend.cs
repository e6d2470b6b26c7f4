using System;

namespace EmaGen;

/// <summary>
/// One way of writing a step's blends: the raw-memory CPU kernels (<see cref="RawCpuBackend"/>) or TorchSharp ops on
/// the tensors' own device (<see cref="TorchOpsBackend"/>, what a CUDA model runs). <see cref="StepPipeline"/> picks one
/// per arena group when it is built, by the group's device (and <see cref="EmaOptions.ForceTorchOps"/>, the CPU stand-in
/// for CUDA in tests); each step it hands every backend the profiles' decays, queues each unit of work into its
/// group's backend, then runs them. A unit is a whole packed group (its flat parameter buffer against each written
/// profile's flat shadow) or one averaged box. A new backend (say, a fused CUDA kernel) implements these four methods
/// and is chosen in <see cref="StepPipeline"/>'s constructor.
/// </summary>
internal interface IUpdateBackend
{
    /// <summary>Starts a step: per profile its decay, NaN for a profile this step does not write.</summary>
    void Begin(ReadOnlySpan<double> decays);

    /// <summary>Queues packed group <paramref name="group"/> as one unit, for every written profile.</summary>
    void QueueGroup(int group);

    /// <summary>Queues averaged box <paramref name="item"/> on its own, for every written profile.</summary>
    void QueueTensor(int item);

    /// <summary>Writes every queued unit, then forgets them.</summary>
    void Run();
}

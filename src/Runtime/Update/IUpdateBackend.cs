namespace EmaGen;

/// <summary>
/// One way of writing a step's blends: the raw-memory CPU kernels (<see cref="RawCpuBackend"/>) or TorchSharp ops on
/// the tensors' own device (<see cref="TorchOpsBackend"/>, what a CUDA model runs). The engine picks one per arena group
/// when it is built, by the group's device (and <see cref="EmaOptions.ForceTorchOps"/>, the CPU stand-in for CUDA in
/// tests); each step it queues every unit of work into its group's backend, then runs both. A unit is a whole packed
/// group (its flat parameter buffer against each active profile's flat shadow: one blend per group and profile, no
/// per-tensor launches) or one averaged tensor. A new backend (say, a fused CUDA kernel) implements these three
/// methods and is chosen in <see cref="UpdateEngine"/>'s constructor; both backends compute
/// <see cref="EmaKernels.Blend(float, float, float, float)"/>'s expression.
/// </summary>
internal interface IUpdateBackend
{
    /// <summary>Queues packed group <paramref name="group"/> as one unit, for every active profile.</summary>
    void QueueGroup(int group);

    /// <summary>Queues averaged tensor <paramref name="item"/> on its own, for every active profile.</summary>
    void QueueTensor(int item);

    /// <summary>Writes every queued unit, then forgets them.</summary>
    void Run();
}

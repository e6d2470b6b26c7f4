using System;
using TorchSharp;

namespace EmaGen.Dcp;

/// <summary>
/// A tensor made only when <see cref="DcpWriter"/> writes it and disposed right after, so a state with converted
/// copies (say fp16 snapshots of fp32 shadows) costs one converted tensor of memory at a time, not all of them.
/// </summary>
/// <param name="Make">Creates the tensor; the writer owns and disposes what it returns.</param>
/// <param name="DType">The dtype of the tensor <paramref name="Make"/> returns (checked when it is made).</param>
/// <param name="Shape">The shape of the tensor <paramref name="Make"/> returns (checked when it is made).</param>
internal sealed record DeferredTensor(Func<torch.Tensor> Make, torch.ScalarType DType, long[] Shape);

/// <summary>
/// A box of a checkpoint's tensor (as <see cref="DcpShard"/>: key, where it sits in the global tensor) whose data is a
/// <see cref="DeferredTensor"/>: made when written, freed right after.
/// </summary>
internal sealed record DeferredShard(string Key, DeferredTensor Later, long[] GlobalSize, long[] Offsets, bool Replicated);

using TorchSharp;

namespace EmaGen.Dcp;

/// <summary>One rank's contribution to a sharded tensor: its local block, where the block sits in the global tensor.</summary>
/// <param name="Key">Flattened key.</param>
/// <param name="Local">The rank's block (CPU or any device; may be empty).</param>
/// <param name="GlobalSize">Shape of the whole tensor.</param>
/// <param name="Offsets">Where <paramref name="Local"/> starts in every dimension.</param>
/// <param name="Replicated">Every rank holds the whole tensor; only rank 0 writes it, so it is stored once.</param>
public sealed record DcpShard(string Key, torch.Tensor Local, long[] GlobalSize, long[] Offsets, bool Replicated = false);

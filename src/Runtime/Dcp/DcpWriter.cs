using System.Collections.Generic;

namespace EmaGen.Dcp;

/// <summary>
/// Writes a PyTorch Distributed Checkpoint folder from one process (rank 0): data files first, <c>.metadata</c> last
/// (through <c>.metadata.tmp</c>, flushed to disk, renamed), all inside a staging folder that replaces the previous
/// checkpoint only once complete. A failure or crash at any point leaves the previous checkpoint loadable.
/// </summary>
public static class DcpWriter
{
    /// <summary>
    /// Saves <paramref name="state"/> (flattened keys → <see cref="TorchSharp.torch.Tensor"/> or plain values: null,
    /// bool, integers, doubles, strings, lists, string-keyed dicts) to <paramref name="directory"/>, each tensor as one
    /// full chunk.
    /// </summary>
    public static DcpMetadata Save(string directory, IEnumerable<KeyValuePair<string, object?>> state, DcpWriteOptions? options = null) =>
        DcpSave.Run(TensorChunks.OneRank(directory, state, options))!;
}

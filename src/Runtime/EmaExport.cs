using System.Collections.Generic;
using EmaGen.Export;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// Publishing the EMA at the end of training, as <c>emagen export</c> does: Hugging Face style safetensors from a saved
/// checkpoint folder. A sharded manager's rank 0 exports from the committed folder; no collective is needed.
/// </summary>
public static class EmaExport
{
    /// <summary>
    /// Writes the EMA weights in <paramref name="checkpointDir"/> (an EmaGen or PyTorch DCP folder, or a
    /// <c>.safetensors</c> file) to <paramref name="outputDir"/> as <c>model.safetensors</c>, or as numbered shards of at
    /// most <paramref name="maxShardBytes"/> plus <c>model.safetensors.index.json</c>; floating-point tensors cast to
    /// <paramref name="dtype"/> (null: as stored), names with <paramref name="stripPrefix"/> removed and
    /// <paramref name="addPrefix"/> added. Streamed, one tensor at a time; a failed export leaves no file under the final names.
    /// </summary>
    /// <returns>The files written (shards, then the index when sharded).</returns>
    public static IReadOnlyList<string> ToSafetensors(string checkpointDir, string outputDir, string? profile = null, torch.ScalarType? dtype = null,
        string? stripPrefix = null, string? addPrefix = null, long maxShardBytes = 0, string prefix = EmaCheckpoint.DefaultPrefix)
    {
        var options = new ExportOptions(profile, dtype is { } d ? DTypes.Of(d).Row : null, stripPrefix, addPrefix, maxShardBytes, prefix);
        return SafetensorsExport.Run(checkpointDir, outputDir, options).Files;
    }
}

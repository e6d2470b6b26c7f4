using System.IO;

namespace EmaGen.Dcp;

/// <summary>
/// The one exception type for a checkpoint that cannot be read or does not fit: malformed or truncated bytes, a pickle
/// global outside the whitelist, a missing key, an unsupported dtype. The message names the file and, where known,
/// the key or field, and what was expected.
/// </summary>
public sealed class CheckpointFormatException : IOException
{
    internal CheckpointFormatException(string message) : base(message)
    {
    }

    internal CheckpointFormatException(string message, System.Exception inner) : base(message, inner)
    {
    }
}

using System.Collections.Generic;

namespace EmaGen.Dcp;

/// <summary>A DCP folder's entries and non-tensor values: what the EMA checkpoint schema reads (<see cref="EmaCheckpoint"/>), from either reader.</summary>
internal interface IDcpValues
{
    DcpMetadata Metadata { get; }

    IReadOnlyList<DcpEntry> Entries { get; }

    object? ReadValue(string key);
}

namespace EmaGen.Dcp;

/// <summary>How <c>DcpWriter</c> (and every EmaGen save) writes a checkpoint folder.</summary>
public sealed class DcpWriteOptions
{
    /// <summary>Class names in <c>.metadata</c>: 2.3+ (default) or 2.0-2.2 compatible.</summary>
    public DcpNaming Naming { get; init; } = DcpNaming.PyTorch23;

    /// <summary>Data files to spread items over (<c>__0_0.distcp</c>, <c>__0_1.distcp</c>, ...), as PyTorch's thread_count.</summary>
    public int FilesPerRank { get; init; } = 1;

    /// <summary>Write ZIP64 fields in every tensor archive (tests the large-archive path on small data).</summary>
    internal bool ForceZip64 { get; init; }
}

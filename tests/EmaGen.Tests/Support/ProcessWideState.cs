using Xunit;

namespace EmaGen.Tests.Support;

/// <summary>
/// Tests that depend on or replace process-wide state run alone: those that must reproduce bits written earlier from
/// <c>torch.manual_seed</c> (LibTorch has one default generator per process, so a test class drawing random numbers in
/// parallel would shift the sequence), those that swap a static hook such as <c>DiskSpace.Available</c>, and those that
/// bound the process's peak resident memory (a test allocating in parallel would count against their budget).
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ProcessWideState
{
    public const string Name = "Process-wide state";
}

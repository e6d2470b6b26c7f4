using Xunit;

namespace EmaGen.Tests.Support;

/// <summary>
/// Tests that build or publish this repository's projects (NativeAOT publish, packing): they share Release build
/// folders, so they run one at a time.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class RepositoryBuilds
{
    public const string Name = "Repository builds";
}

using Xunit;

namespace EmaGen.Tests.Support;

/// <summary>
/// Tests that must reproduce bits written earlier from <c>torch.manual_seed</c>: LibTorch's default generator is one per
/// process, so a test class drawing random numbers in parallel would shift the sequence. They run alone.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class SeededRandom
{
    public const string Name = "Seeded random";
}

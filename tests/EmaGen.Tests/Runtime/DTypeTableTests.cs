using System.Linq;
using EmaGen.Dcp;
using TorchSharp;
using Xunit;

namespace EmaGen.Tests.Runtime;

/// <summary>The one dtype table agrees with TorchSharp itself and maps every name back to its row.</summary>
public sealed class DTypeTableTests
{
    [Fact]
    public void EveryRowAgreesWithTorchSharpAndRoundTrips()
    {
        foreach (var row in DTypes.All)
        {
            Assert.True(DTypes.TryGetByTorchName(row.TorchName, out var byName) && ReferenceEquals(row, byName), row.TorchName);
            if (row.StorageClass is { } storage) Assert.True(DTypes.TryGetByStorageClass(storage, out var s) && ReferenceEquals(row, s), storage);
            if (row.SafetensorsCode is { } code) Assert.True(DTypes.TryGetBySafetensorsCode(code, out var c) && ReferenceEquals(row, c), code);
            if (row.Type is not { } type)
            {
                Assert.False(TorchDTypes.TryGet(row.TorchName, out _, out _), row.TorchName);
                continue;
            }
            using var probe = torch.empty(0, type);
            Assert.Equal((int)probe.ElementSize, row.Size);
            Assert.Equal(probe.is_floating_point(), row.IsFloatingPoint);
            Assert.Equal(row.TorchName, TorchDTypes.NameOf(type));
            Assert.True(TorchDTypes.TryGet(row.TorchName, out var back, out int size) && back == type && size == row.Size);
        }
        Assert.Equal(DTypes.All.Count, DTypes.All.Select(r => r.TorchName).Distinct().Count());
        Assert.Equal(torch.ScalarType.Float32, DTypes.ShadowDTypeFor(torch.ScalarType.BFloat16, lowPrecision: false));
        Assert.Equal(torch.ScalarType.BFloat16, DTypes.ShadowDTypeFor(torch.ScalarType.BFloat16, lowPrecision: true));
        Assert.Equal(torch.ScalarType.Int64, DTypes.ShadowDTypeFor(torch.ScalarType.Int64, lowPrecision: false));
    }
}

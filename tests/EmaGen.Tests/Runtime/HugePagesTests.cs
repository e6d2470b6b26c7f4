using System;
using System.Globalization;
using System.IO;
using EmaGen.Tests.Models;
using Xunit;
using static TorchSharp.torch;

namespace EmaGen.Tests.Runtime;

/// <summary>
/// The manager's flat CPU buffers (shadows and packed parameters) are advised onto transparent huge pages wherever the
/// system offers them, and start out exactly as <c>torch.zeros</c> plus the copied
/// values would.
/// </summary>
public sealed class HugePagesTests
{
    [Fact]
    public void TheShadowAndPackedBuffersAreAdvisedAndHoldZerosBetweenTensors()
    {
        // Three tensors of 1.5M fp32 elements: 18 MB per buffer, several whole huge pages inside each; 5 and 7 leave padding.
        using var model = new SizedModel(ScalarType.Float32, 1_500_000, 5, 1_500_000, 7, 1_500_000);
        using var ema = new EmaManager<SizedModel>(model);
        ema.Update(model);
        var packed = LiveSlots.DataPointer(model[0]);
        var shadow = LiveSlots.DataPointer(ema["leaves.0.w"]);
        long bytes = (long)(LiveSlots.DataPointer(model[4]) - packed) + 1_500_000 * 4;

        string setting = ReadSetting();
        if (setting.Contains("[never]", StringComparison.Ordinal) || setting.Length == 0)
        {
            Assert.Equal(0, HugePages.Size);
        }
        else
        {
            Assert.True(HugePages.Size > 0, setting);
            foreach (var (name, start) in new[] { ("packed parameters", packed), ("shadows", shadow) })
            {
                var (from, length) = HugePages.Interior(start, bytes);
                Assert.True(length >= (nuint)HugePages.Size, $"{name}: {bytes} bytes from {start:x} hold no whole huge page");
                // The buffer's whole huge pages are advised: the mappings holding its first and last say so. (Where the
                // mapping ends says nothing: the kernel merges it with a neighbour advised alike, say another manager's
                // buffer, or a range a freed one left advised.)
                Assert.Contains(" hg", MappingFlagsAt(from));
                Assert.Contains(" hg", MappingFlagsAt(from + (nint)length - 1));
            }
        }

        // Padding after the 5- and 7-element tensors is zero in both buffers (the guard reads it every step).
        AssertPaddingIsZero(ema, (model[1], "leaves.1.w"), (model[3], "leaves.3.w"));
        Assert.Equal(model[2].data<float>().ToArray(), ema["leaves.2.w"].data<float>().ToArray());
    }

    [Fact]
    public void ASmallBufferFromReusedMemoryStartsAsZerosToo()
    {
        // 336 fp32 elements per buffer (5, 300 and 7, each padded to 64 bytes): small enough for the allocator to hand
        // back memory freed just before, here filled with NaN, which the padding must not keep.
        using var model = new SizedModel(ScalarType.Float32, 5, 300, 7);
        for (int i = 0; i < 8; i++)
        {
            using var dirty = full(336, float.NaN);
        }
        using var ema = new EmaManager<SizedModel>(model);
        AssertPaddingIsZero(ema, (model[0], "leaves.0.w"), (model[2], "leaves.2.w"));
        ema.Update(model);
        Assert.Equal(0, ema.LastUpdate.NonFiniteElements);
    }

    // The floats between each tensor's end and the next 64-byte boundary, in the packed parameters and in its shadow.
    private static unsafe void AssertPaddingIsZero(EmaManager<SizedModel> ema, params (Tensor Tensor, string ShadowName)[] tensors)
    {
        foreach (var (tensor, shadowName) in tensors)
        {
            foreach (var at in new[] { LiveSlots.DataPointer(tensor), LiveSlots.DataPointer(ema[shadowName]) })
            {
                var padding = new ReadOnlySpan<float>((float*)at + tensor.numel(), 16 - (int)tensor.numel());
                Assert.Equal(new float[padding.Length], padding.ToArray());
            }
        }
    }

    private static string ReadSetting()
    {
        try
        {
            return File.ReadAllText("/sys/kernel/mm/transparent_hugepage/enabled");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return "";
        }
    }

    // The VmFlags line of the mapping of this process that holds `address`.
    private static string MappingFlagsAt(nint address)
    {
        bool inside = false;
        foreach (var line in File.ReadLines("/proc/self/smaps"))
        {
            int dash = line.IndexOf('-');
            int space = line.IndexOf(' ');
            if (dash > 0 && space > dash && IsHex(line.AsSpan(0, dash)))
            {
                long start = long.Parse(line.AsSpan(0, dash), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
                long stop = long.Parse(line.AsSpan(dash + 1, space - dash - 1), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
                inside = start <= address && address < stop;
            }
            else if (inside && line.StartsWith("VmFlags:", StringComparison.Ordinal))
            {
                return line;
            }
        }
        throw new InvalidOperationException($"no mapping holds {address:x}");
    }

    private static bool IsHex(ReadOnlySpan<char> text)
    {
        foreach (char c in text)
        {
            if (!char.IsAsciiHexDigit(c)) return false;
        }
        return text.Length > 0;
    }
}

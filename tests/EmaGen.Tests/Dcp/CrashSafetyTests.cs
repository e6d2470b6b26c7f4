using System.Collections.Generic;
using System.IO;
using System.Linq;
using EmaGen.Dcp;
using EmaGen.Tests.Support;
using TorchSharp;
using Xunit;

namespace EmaGen.Tests.Dcp;

/// <summary>A save that fails at any stage leaves the previous checkpoint loadable and no half-written .metadata.</summary>
public sealed class CrashSafetyTests
{
    [Theory]
    [InlineData("data")]
    [InlineData("metadata")]
    [InlineData("commit")]
    public void FailureAtAnyStageKeepsThePreviousCheckpoint(string stage)
    {
        using var folder = TestPaths.NewTempFolder();
        var target = folder["ckpt"];
        DcpWriter.Save(target, State(1f));
        using (FileOps.FailAt(stage))
        {
            var e = Assert.Throws<IOException>(() => DcpWriter.Save(target, State(2f)));
            Assert.Contains(stage, e.Message);
        }

        Assert.Equal(new[] { 1f, 1f }, DcpReader.Open(target).ReadTensor("w").data<float>().ToArray());
        Assert.False(File.Exists(Path.Combine(target, ".metadata.tmp")));
        Assert.Equal(new[] { "ckpt" }, Directory.GetDirectories(folder.Path).Select(Path.GetFileName));

        DcpWriter.Save(target, State(3f));
        Assert.Equal(new[] { 3f, 3f }, DcpReader.Open(target).ReadTensor("w").data<float>().ToArray());
    }

    [Fact]
    public void AKilledSaveLeavesOnlyAStagingFolderBehind()
    {
        using var folder = TestPaths.NewTempFolder();
        var target = folder["ckpt"];
        DcpWriter.Save(target, State(1f));
        // What a process killed mid-save leaves: a staging folder with data and .metadata.tmp, never touching the target.
        var staged = Path.Combine(folder.Path, ".ckpt.saving-deadbeef");
        Directory.CreateDirectory(staged);
        File.WriteAllBytes(Path.Combine(staged, "__0_0.distcp"), new byte[100]);
        File.WriteAllBytes(Path.Combine(staged, ".metadata.tmp"), new byte[10]);
        Assert.Equal(new[] { 1f, 1f }, DcpReader.Open(target).ReadTensor("w").data<float>().ToArray());
        var half = Assert.Throws<CheckpointFormatException>(() => DcpReader.Open(staged));
        Assert.Contains(".metadata.tmp", half.Message);
    }

    private static IEnumerable<KeyValuePair<string, object?>> State(float value) =>
        new[] { new KeyValuePair<string, object?>("w", torch.full(2, value)), new KeyValuePair<string, object?>("step", (long)value) };
}

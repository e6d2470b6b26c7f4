using System;
using System.IO;
using System.Linq;
using EmaGen.Dcp;
using EmaGen.Tests.Models;
using EmaGen.Tests.Runtime;
using EmaGen.Tests.Support;
using Xunit;

namespace EmaGen.Tests.Dcp;

/// <summary>
/// A save that cannot fit the disk is refused before anything is written. It replaces the process-wide
/// <see cref="DiskSpace.Available"/> hook, so it runs alone.
/// </summary>
[Collection(ProcessWideState.Name)]
public sealed class DiskSpaceTests
{
    [Fact]
    public void ASaveWithoutRoomFailsFirstAndKeepsThePreviousCheckpoint()
    {
        using var folder = TestPaths.NewTempFolder();
        using var model = new BareParameters(reflection: false);
        using var ema = new EmaManager<BareParameters>(model, 0.5);
        ema.Save(folder["ckpt"]);
        var saved = DcpReader.Open(folder["ckpt"]).Metadata.SaveId;
        var original = DiskSpace.Available;
        try
        {
            DiskSpace.Available = _ => 1000;
            ema.Update(model);
            var e = Assert.Throws<IOException>(() => ema.Save(folder["ckpt"]));
            Assert.Contains("has 1,000 free", e.Message);
            Assert.Matches("needs about [0-9,]+ bytes", e.Message);
            var failed = ema.SaveAsync(folder["ckpt"]);
            Assert.ThrowsAny<IOException>(() => failed.GetAwaiter().GetResult());
        }
        finally
        {
            DiskSpace.Available = original;
        }
        Assert.Equal(saved, DcpReader.Open(folder["ckpt"]).Metadata.SaveId);
        Assert.Equal(new[] { "ckpt" }, Directory.GetDirectories(folder.Path).Select(Path.GetFileName));
        // The failed asynchronous save is reported once more by the manager, then it saves again.
        Assert.Throws<IOException>(() => ema.Save(folder["ckpt"]));
        ema.Save(folder["ckpt"]);
    }
}

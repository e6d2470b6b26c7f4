using System;
using System.IO;
using EmaGen.Dcp;

namespace EmaGen.Tests.Support;

/// <summary>
/// Watches the checkpoint code's file-system operations (<see cref="CheckpointFiles.Observer"/>) for the current flow
/// (this test and the tasks it starts) until disposed.
/// </summary>
internal sealed class FileOps : IDisposable
{
    private readonly Action<FileOp, string>? _previous;

    public FileOps(Action<FileOp, string> observer)
    {
        _previous = CheckpointFiles.Observer;
        CheckpointFiles.Observer = observer;
    }

    public void Dispose() => CheckpointFiles.Observer = _previous;

    /// <summary>
    /// Whether an operation is the named stage of a save: <c>data</c> (a data file flushed to disk), <c>metadata</c>
    /// (<c>.metadata.tmp</c> flushed), <c>commit</c> (the staging folder renamed onto the target).
    /// </summary>
    public static bool IsStage(FileOp op, string path, string stage) => stage switch
    {
        "data" => op == FileOp.Sync && path.EndsWith(".distcp", StringComparison.Ordinal),
        "metadata" => op == FileOp.Sync && path.EndsWith(".metadata.tmp", StringComparison.Ordinal),
        "commit" => op == FileOp.Rename && !Path.GetFileName(path).StartsWith('.'),
        _ => throw new ArgumentOutOfRangeException(nameof(stage), stage, null),
    };

    /// <summary>Fails the first operation of <paramref name="stage"/> with an <see cref="IOException"/> naming the stage.</summary>
    public static FileOps FailAt(string stage) =>
        new((op, path) => { if (IsStage(op, path, stage)) throw new IOException($"simulated failure at {stage}: '{path}'"); });
}

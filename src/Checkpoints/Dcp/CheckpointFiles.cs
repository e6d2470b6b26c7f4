using System;
using System.IO;
using System.Threading;

namespace EmaGen.Dcp;

/// <summary>A file-system operation of a checkpoint save or load, as <see cref="CheckpointFiles"/> reports it.</summary>
internal enum FileOp
{
    CreateFile,
    Write,
    Flush,
    Sync,
    OpenRead,
    Read,
    Rename,
    CreateDirectory,
    DeleteFile,
    DeleteDirectory,
}

/// <summary>
/// Every file-system operation that writes or reads checkpoint data goes through here (the data files, manifests,
/// <c>.metadata</c>, the staging folder and its locks, the swap, safetensors files), so that tests can fail the N-th
/// one with a chosen error, as SQLite tests its I/O errors; what only looks (existence checks, listings, lock probes,
/// failure words) does not. Production code pays one null check per operation.
/// </summary>
internal static class CheckpointFiles
{
    private static readonly AsyncLocal<Action<FileOp, string>?> ObserverOfFlow = new();

    /// <summary>
    /// Test seam: called before every operation with what it is and its path; throwing fails that operation (a
    /// <see cref="ShortWriteException"/> on a write first writes half the bytes). It flows with the execution context,
    /// so an asynchronous save's task sees the observer of the call that started it, and parallel tests do not see
    /// each other's.
    /// </summary>
    internal static Action<FileOp, string>? Observer
    {
        get => ObserverOfFlow.Value;
        set => ObserverOfFlow.Value = value;
    }

    public static void Before(FileOp op, string path) => ObserverOfFlow.Value?.Invoke(op, path);

    /// <summary>Creates (or truncates) a file for writing; <see cref="Sync"/> it before relying on its bytes.</summary>
    public static Stream Create(string path, int bufferSize = 1 << 20)
    {
        Before(FileOp.CreateFile, path);
        if (ObserverOfFlow.Value is null) return new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, bufferSize);
        // Observed below the buffer, so each reported write is one the OS would see (a full buffer, a flush).
        return new BufferedStream(new ObservedStream(new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1), path), bufferSize);
    }

    public static Stream OpenRead(string path, int bufferSize = 1 << 16)
    {
        Before(FileOp.OpenRead, path);
        if (ObserverOfFlow.Value is null) return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize);
        return new BufferedStream(new ObservedStream(new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1), path), bufferSize);
    }

    public static byte[] ReadAllBytes(string path)
    {
        Before(FileOp.OpenRead, path);
        Before(FileOp.Read, path);
        return File.ReadAllBytes(path);
    }

    /// <summary>Writes <paramref name="bytes"/> to a new file and flushes them to the disk; a failure closes it without a second error.</summary>
    public static void WriteDurably(string path, ReadOnlySpan<byte> bytes)
    {
        var stream = Create(path, 1 << 16);
        try
        {
            stream.Write(bytes);
            Sync(stream);
        }
        catch
        {
            DisposeQuietly(stream);
            throw;
        }
        stream.Dispose();
    }

    /// <summary>Flushes <paramref name="stream"/> (made by <see cref="Create"/>) through to the disk.</summary>
    public static void Sync(Stream stream)
    {
        switch (stream)
        {
            case FileStream file:
                file.Flush(flushToDisk: true);
                break;
            case BufferedStream { UnderlyingStream: ObservedStream observed } buffered:
                buffered.Flush();
                observed.Sync();
                break;
            default:
                throw new ArgumentException("not a checkpoint file", nameof(stream));
        }
    }

    public static void MoveFile(string from, string to, bool overwrite = false)
    {
        Before(FileOp.Rename, to);
        File.Move(from, to, overwrite);
    }

    public static void MoveDirectory(string from, string to)
    {
        Before(FileOp.Rename, to);
        Directory.Move(from, to);
    }

    public static void CreateDirectory(string path)
    {
        Before(FileOp.CreateDirectory, path);
        Directory.CreateDirectory(path);
    }

    public static void DeleteFile(string path)
    {
        Before(FileOp.DeleteFile, path);
        File.Delete(path);
    }

    public static void DeleteDirectory(string path)
    {
        Before(FileOp.DeleteDirectory, path);
        Directory.Delete(path, recursive: true);
    }

    /// <summary>
    /// Removes what a failed operation left, without hiding the failure that is being reported: a second error here
    /// is dropped, and what stays behind is removed by the next save of the same target (its stale-folder sweep).
    /// </summary>
    public static void TryDeleteDirectory(string path)
    {
        try
        {
            if (Directory.Exists(path)) DeleteDirectory(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }

    public static void TryDeleteFile(string path)
    {
        try
        {
            DeleteFile(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }

    /// <summary>Disposes <paramref name="stream"/> after a failure, whose report a second error (flushing its buffer onto a full disk) must not replace.</summary>
    public static void DisposeQuietly(Stream? stream)
    {
        try
        {
            stream?.Dispose();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }

    // A file whose every write, flush and read is reported first.
    private sealed class ObservedStream(FileStream file, string path) : Stream
    {
        public override bool CanRead => file.CanRead;

        public override bool CanSeek => file.CanSeek;

        public override bool CanWrite => file.CanWrite;

        public override long Length => file.Length;

        public override long Position { get => file.Position; set => file.Position = value; }

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            try
            {
                Before(FileOp.Write, path);
            }
            catch (ShortWriteException)
            {
                // What a full disk does part-way through a write: some bytes land, then the error.
                file.Write(buffer[..(buffer.Length / 2)]);
                file.Flush();
                throw;
            }
            file.Write(buffer);
        }

        public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

        public override void Flush()
        {
            Before(FileOp.Flush, path);
            file.Flush();
        }

        public void Sync()
        {
            Before(FileOp.Sync, path);
            file.Flush(flushToDisk: true);
        }

        public override int Read(Span<byte> buffer)
        {
            Before(FileOp.Read, path);
            return file.Read(buffer);
        }

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override long Seek(long offset, SeekOrigin origin) => file.Seek(offset, origin);

        public override void SetLength(long value) => file.SetLength(value);

        protected override void Dispose(bool disposing)
        {
            if (disposing) file.Dispose();
            base.Dispose(disposing);
        }
    }
}

/// <summary>Thrown by a test's <see cref="CheckpointFiles.Observer"/> to make a write land half its bytes before failing.</summary>
internal sealed class ShortWriteException(string message) : IOException(message);

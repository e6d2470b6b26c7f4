using System;
using System.Collections.Generic;
using System.IO;
using System.Threading.Tasks;
using TorchSharp;

namespace EmaGen.Dcp;

/// <summary>
/// The saves of one manager (its checkpoints and its post-hoc snapshots), synchronous and asynchronous, in call
/// order: every save first waits for the previous asynchronous write, so an older commit never replaces a newer
/// checkpoint; saves from several threads take turns. An asynchronous save is shaped like PyTorch's
/// <c>dcp.async_save</c>: the calling thread stages (copies) what the save needs, after which the live shadows are free
/// to change; a task then runs the one save path (<see cref="DcpSave"/>: write, fsync, commit, swap) and completes once
/// the checkpoint is committed. A failure faults that task and leaves the previous checkpoint in place. It is also
/// reported once more, so a write nobody awaited never fails silently (as Orbax and Lightning report an earlier
/// asynchronous checkpoint's error at the next save): the next save call still makes its own save (a sharded save's
/// ranks stay in step) and then throws the earlier failure; with no later save, <see cref="Dispose"/> throws it.
/// Staging memory is freed only once no write can still read it: a save's own copies when its write ends, however it
/// ends; the copies kept from save to save when the manager is disposed, after its last write.
/// </summary>
internal sealed class SaveQueue : IDisposable
{
    private readonly object _turn = new();
    private Task? _pending;
    private string? _pendingFolder;
    private StagingCopies? _kept;
    private bool _disposed;

    /// <summary>A synchronous save, after the previous asynchronous one.</summary>
    public DcpMetadata? Run(SaveRequest request)
    {
        lock (_turn)
        {
            var earlier = WaitForPrevious();
            DcpMetadata? committed;
            try
            {
                committed = DcpSave.Run(request);
            }
            catch (IOException e) when (earlier is not null)
            {
                throw new IOException($"{e.Message} (and {earlier.Message})", e);
            }
            if (earlier is not null) throw new IOException($"{earlier.Message} (this save to '{request.Directory}' committed)", earlier.InnerException);
            return committed;
        }
    }

    /// <summary>
    /// Saves the shadows of <paramref name="arenas"/> (one per profile, then a BEMA profile's θ₀ and corrected weights;
    /// the same on every call): copies (or fills, see <see cref="StagedSet"/>) every group
    /// buffer into staging copies kept for the next call (one more copy of the shadows, made on the first call, because
    /// refreshing it costs less than a fresh allocation's page faults), then <paramref name="request"/> builds the save
    /// from views of the staged shadows (per arena, per arena index).
    /// </summary>
    public Task Start(IReadOnlyList<StagedSet> arenas, Func<torch.Tensor?[][], SaveRequest> request)
    {
        lock (_turn)
        {
            var earlier = WaitForPrevious();
            var staged = (_kept ??= new StagingCopies(arenas)).Refresh();
            return Launched(Launch(request(staged), owned: null), earlier);
        }
    }

    /// <summary>
    /// Saves what <paramref name="stage"/> copies into memory of its own (say fp16 conversions of the shadows): it
    /// returns the save and those copies, which are freed once the write has ended. When it throws, it frees what it
    /// made itself.
    /// </summary>
    public Task Start(Func<(SaveRequest Request, IDisposable Copies)> stage)
    {
        lock (_turn)
        {
            var earlier = WaitForPrevious();
            var (request, copies) = stage();
            return Launched(Launch(request, copies), earlier);
        }
    }

    /// <summary>Waits for the last write, then frees the kept staging copies; throws the last write's failure if no save call has reported it.</summary>
    public void Dispose()
    {
        IOException? earlier;
        lock (_turn)
        {
            if (_disposed) return;
            try
            {
                earlier = WaitForPrevious();
            }
            finally
            {
                _disposed = true;
                _kept?.Dispose();
                _kept = null;
            }
        }
        if (earlier is not null) throw earlier;
    }

    private Task Launch(SaveRequest request, IDisposable? owned)
    {
        var write = Task.Run(() =>
        {
            try
            {
                DcpSave.Run(request);
            }
            finally
            {
                owned?.Dispose();
            }
        });
        _pending = write;
        _pendingFolder = request.Directory;
        return write;
    }

    // The new save runs either way; the earlier failure is then thrown to this call (the new save's own outcome is
    // reported by its task, or by the next call).
    private static Task Launched(Task write, IOException? earlier) =>
        earlier is null ? write : throw new IOException($"{earlier.Message} (a new asynchronous save was started)", earlier.InnerException);

    // Waits for the previous write; returns its failure (once: its task carries it too), or null.
    private IOException? WaitForPrevious()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_pending is not { } write) return null;
        _pending = null;
        try
        {
            write.GetAwaiter().GetResult();
            return null;
        }
        catch (Exception e) when (write.IsFaulted || write.IsCanceled)
        {
            return new IOException($"The asynchronous save to '{_pendingFolder}' failed: {e.Message}", e);
        }
    }
}

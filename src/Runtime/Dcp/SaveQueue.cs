using System;
using System.Collections.Generic;
using System.IO;
using System.Threading.Tasks;
using TorchSharp;

namespace EmaGen.Dcp;

/// <summary>
/// The saves of one manager (its checkpoints and its post-hoc snapshots), synchronous and asynchronous, in call
/// order: every save first waits for the previous asynchronous write, so an older commit never replaces a newer
/// checkpoint. An asynchronous save is shaped like PyTorch's <c>dcp.async_save</c>: the calling thread stages (copies)
/// what the save needs, after which the live shadows are free to change; a task then runs the one save path
/// (<see cref="DcpSave"/>: write, fsync, commit, swap) and completes once the checkpoint is committed. A failure faults
/// that task and leaves the previous checkpoint in place; it is also reported once by the next save call or by
/// <see cref="Dispose"/>, so a write nobody awaited never fails silently (as Orbax and Lightning report an earlier
/// asynchronous checkpoint's error). Staging memory is freed only once no write can still read it: a save's own copies
/// when its write ends, however it ends; the copies kept from save to save when the manager is disposed, after its
/// last write.
/// </summary>
internal sealed class SaveQueue : IDisposable
{
    private Task? _pending;
    private string? _pendingFolder;
    private StagingCopies? _kept;
    private bool _disposed;

    /// <summary>A synchronous save, after the previous asynchronous one.</summary>
    public DcpMetadata? Run(SaveRequest request)
    {
        WaitForPrevious();
        return DcpSave.Run(request);
    }

    /// <summary>
    /// Saves the shadows of <paramref name="arenas"/> (one per profile, the same on every call): copies every group
    /// buffer into staging copies kept for the next call (one more copy of the shadows, made on the first call, because
    /// refreshing it costs less than a fresh allocation's page faults), then <paramref name="request"/> builds the save
    /// from views of the staged shadows (per arena, per arena index).
    /// </summary>
    public Task Start(IReadOnlyList<ShadowArena> arenas, Func<torch.Tensor?[][], SaveRequest> request)
    {
        WaitForPrevious();
        var staged = (_kept ??= new StagingCopies(arenas)).Refresh();
        return Launch(request(staged), owned: null);
    }

    /// <summary>
    /// Saves what <paramref name="stage"/> copies into memory of its own (say fp16 conversions of the shadows): it
    /// returns the save and those copies, which are freed once the write has ended. When it throws, it frees what it
    /// made itself.
    /// </summary>
    public Task Start(Func<(SaveRequest Request, IDisposable Copies)> stage)
    {
        WaitForPrevious();
        var (request, copies) = stage();
        return Launch(request, copies);
    }

    /// <summary>Waits for the last write, then frees the kept staging copies; reports the last write's failure if no save call has.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        try
        {
            WaitForPrevious();
        }
        finally
        {
            _disposed = true;
            _kept?.Dispose();
            _kept = null;
        }
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

    // Waits for the previous write; its failure is thrown here once (its task carries it too).
    private void WaitForPrevious()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_pending is not { } write) return;
        _pending = null;
        try
        {
            write.GetAwaiter().GetResult();
        }
        catch (Exception e) when (write.IsFaulted || write.IsCanceled)
        {
            throw new IOException(
                $"The asynchronous save to '{_pendingFolder}' failed and committed nothing (the previous checkpoint there is intact): {e.Message}", e);
        }
    }
}

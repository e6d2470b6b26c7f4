using System;
using System.Collections.Generic;
using System.Threading.Tasks;
using TorchSharp;

namespace EmaGen.Dcp;

/// <summary>
/// The asynchronous saves of one manager (its checkpoints and its post-hoc snapshots), shaped like PyTorch's
/// <c>dcp.async_save</c>: the calling thread stages (copies) what the save needs, after which the live shadows are free
/// to change; a task then runs the one save path (<see cref="DcpSave"/>: write, fsync, commit, swap) and completes once
/// the checkpoint is committed. One write runs at a time: a call first waits for the previous write, whose failure
/// belongs to whoever holds its task. A failure surfaces in the task, and the save path leaves the previous checkpoint
/// in place. Staging memory is freed only once no write can still read it: a save's own copies when its write ends,
/// however it ends; the copies kept from save to save when the manager is disposed, after its last write.
/// </summary>
internal sealed class AsyncSave : IDisposable
{
    private Task? _pending;
    private StagingCopies? _kept;
    private bool _disposed;

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

    /// <summary>Waits for the last write, then frees the kept staging copies.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        WaitForPrevious();
        _disposed = true;
        _kept?.Dispose();
        _kept = null;
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
        return write;
    }

    // The previous write's failure is not rethrown here: it belongs to whoever holds the task its call returned.
    private void WaitForPrevious()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_pending is not { } write) return;
        try
        {
            write.GetAwaiter().GetResult();
        }
        catch (Exception) when (write.IsFaulted || write.IsCanceled)
        {
        }
        _pending = null;
    }
}

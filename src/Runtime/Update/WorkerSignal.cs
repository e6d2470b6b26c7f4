using System.Threading;

namespace EmaGen;

/// <summary>
/// A manual-reset signal that never allocates managed memory, unlike ManualResetEventSlim, which creates its lock
/// object and kernel event lazily on the first wait that blocks (which made the update's allocation count depend on
/// thread timing). A short spin, then Monitor.Wait on a lock object made up front.
/// </summary>
internal sealed class WorkerSignal
{
    private const int SpinIterations = 20;
    private readonly object _lock = new();
    private volatile bool _set;

    public void Set()
    {
        lock (_lock)
        {
            _set = true;
            Monitor.PulseAll(_lock);
        }
    }

    public void Reset() => _set = false;

    public void Wait()
    {
        var spinner = new SpinWait();
        for (int i = 0; i < SpinIterations && !_set; i++) spinner.SpinOnce(sleep1Threshold: -1);
        if (_set) return;
        lock (_lock)
        {
            while (!_set) Monitor.Wait(_lock);
        }
    }
}

using TorchSharp;

namespace EmaGen;

/// <summary>
/// TorchSharp's in-place operations return the tensor they were called on, but have returned fresh wrappers of the same
/// storage in some versions. Disposing such a result must never dispose the target itself.
/// </summary>
internal static class InPlace
{
    public static void Release(torch.Tensor result, torch.Tensor target)
    {
        if (!ReferenceEquals(result, target)) result.Dispose();
    }
}

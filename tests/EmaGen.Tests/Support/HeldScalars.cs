using TorchSharp;

namespace EmaGen.Tests.Support;

/// <summary>
/// Scalars held for the whole run, for loops of TorchSharp ops. TorchSharp 0.107 passes a temporary Scalar's raw handle
/// (an implicit <c>1</c>, <c>0.01</c>, or the default alpha of <c>add_(tensor)</c>) and keeps the object no longer, so
/// its finalizer can free it during the native call: under the suite's GC pressure LibTorch then read a freed scalar
/// ("Expected false to be true" from <c>toBFloat16</c>).
/// </summary>
internal static class HeldScalars
{
    public static readonly Scalar One = 1.ToScalar();
    public static readonly Scalar Hundredth = 0.01.ToScalar();
}

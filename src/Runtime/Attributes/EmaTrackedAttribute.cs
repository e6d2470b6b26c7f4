using System;

namespace EmaGen;

/// <summary>
/// Marks a <c>partial</c> TorchSharp module class whose parameters EmaGen averages. The source generator emits, into
/// the same class, an <see cref="IEmaTracked{TSelf}"/> implementation, a typed shadow class <c>EmaShadow</c> whose
/// members mirror the module tree, and a reflection-free <c>RegisterComponents()</c> override that registers every
/// parameter, buffer and submodule by name (TorchSharp's own implementation walks fields by reflection, which finds
/// nothing in a NativeAOT binary).
/// </summary>
[AttributeUsage(AttributeTargets.Class, Inherited = false, AllowMultiple = false)]
public sealed class EmaTrackedAttribute : Attribute
{
}

using System;

namespace EmaGen;

/// <summary>
/// Excludes a member of an <see cref="EmaTrackedAttribute"/> class from the EMA: the parameter (or every parameter of
/// the submodule) is still registered with TorchSharp and trained, but not averaged, not part of the shadow and not in
/// <c>StateDict()</c>. Also the way out for a member whose parameters cannot be known at compile time.
/// </summary>
[AttributeUsage(AttributeTargets.Field | AttributeTargets.Property, Inherited = false, AllowMultiple = false)]
public sealed class EmaIgnoreAttribute : Attribute
{
}

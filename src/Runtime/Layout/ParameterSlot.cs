using TorchSharp.Modules;

namespace EmaGen;

/// <summary>One visit of <see cref="IEmaParameterVisitor.Parameter"/>: a named parameter, or an empty slot (null parameter).</summary>
internal readonly record struct ParameterSlot(string FullName, string LocalName, Parameter? Parameter, bool Ignored);

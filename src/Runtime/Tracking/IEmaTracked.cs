using EmaGen.CompilerServices;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// Implemented by the source generator for every <see cref="EmaTrackedAttribute"/> class. Static members give the
/// runtime the model's layout without reflection; users do not implement it by hand.
/// </summary>
public interface IEmaTracked<TSelf> where TSelf : torch.nn.Module, IEmaTracked<TSelf>
{
    /// <summary>Hands every parameter slot of <paramref name="module"/> to <paramref name="visitor"/>, in <c>named_parameters()</c> order.</summary>
    static abstract void VisitParameters<TVisitor>(TSelf module, ref TVisitor visitor) where TVisitor : struct, IEmaParameterVisitor;

    /// <summary>Builds the typed shadow tree (the generated <c>EmaShadow</c> class) over the manager's shadow tensors.</summary>
    static abstract object CreateShadow(TSelf module, EmaShadowBuilder builder);
}

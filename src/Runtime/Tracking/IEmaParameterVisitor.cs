using System.ComponentModel;
using TorchSharp;
using TorchSharp.Modules;

namespace EmaGen.CompilerServices;

/// <summary>
/// Receives a tracked model's parameters and buffers from the generated <c>VisitParameters</c>. Parameters arrive in the
/// order of TorchSharp's <c>named_parameters()</c> (a module's own parameters first, then each submodule's, in field
/// order) and buffers in the order of <c>named_buffers()</c>; the two kinds interleave per module. Names arrive as
/// path segments so that a visitor that does not need full names (the per-step update) never builds a string.
/// </summary>
[EditorBrowsable(EditorBrowsableState.Never)]
public interface IEmaParameterVisitor
{
    /// <summary>Enters a named submodule (a field) or, with <paramref name="ignored"/>, one excluded by <see cref="EmaIgnoreAttribute"/>.</summary>
    void EnterModule(string name, bool ignored);

    /// <summary>Enters the element at <paramref name="index"/> of an array or <c>ModuleList</c> of submodules.</summary>
    void EnterIndex(int index);

    /// <summary>
    /// The contents of the submodule or element entered last, when only run time knows them (a <c>Sequential</c>, a
    /// <c>ModuleDict</c>, an <c>LSTM</c>, a <c>TransformerEncoder</c>, a module class without
    /// <see cref="EmaTrackedAttribute"/>): the visitor reads its registered <c>named_parameters()</c> and
    /// <c>named_buffers()</c> (see <c>DynamicModuleContents</c>). <paramref name="shardDim"/> is the shard map entry of the
    /// member holding it, applied to its parameters; its buffers are replicated.
    /// </summary>
    void DynamicModule(torch.nn.Module module, int shardDim);

    /// <summary>Leaves the submodule or element entered last.</summary>
    void ExitModule();

    /// <summary>
    /// One parameter slot. <paramref name="parameter"/> is null where the model holds none (a <c>Linear</c> without
    /// bias); such a slot has no name in <c>named_parameters()</c> but is still visited so every traversal stays aligned.
    /// <paramref name="shardDim"/> is the generated shard map's entry: the dimension split across ranks, or
    /// <see cref="ShardLayout.Replicated"/>.
    /// </summary>
    void Parameter(string name, Parameter? parameter, bool ignored, int shardDim);

    /// <summary>
    /// One buffer slot (a registered non-parameter tensor such as BatchNorm's <c>running_mean</c>), in
    /// <c>named_buffers()</c> order relative to the other buffers. Null where the model holds none.
    /// </summary>
    void Buffer(string name, TorchSharp.torch.Tensor? buffer, bool ignored);
}

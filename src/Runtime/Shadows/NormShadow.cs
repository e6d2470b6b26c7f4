using System.ComponentModel;
using TorchSharp;

namespace EmaGen.CompilerServices;

/// <summary>
/// Shadow of a normalization module with running statistics (BatchNorm*, InstanceNorm*): the affine <c>weight</c> and
/// <c>bias</c>, and the buffers <c>running_mean</c>, <c>running_var</c>, <c>num_batches_tracked</c> (tracked with
/// <see cref="EmaOptions.TrackBuffers"/>; the counter is copied, never averaged). Each property throws, naming the
/// slot, when it has no shadow; <see cref="BuiltinModuleShadow.Entry"/> says whether it has one.
/// </summary>
[EditorBrowsable(EditorBrowsableState.Never)]
public sealed class NormShadow : BuiltinModuleShadow
{
    /// <summary>Built by generated code, in TorchSharp's registration order.</summary>
    public NormShadow(EmaShadowEntry weight, EmaShadowEntry bias, EmaShadowEntry runningMean, EmaShadowEntry runningVar, EmaShadowEntry numBatchesTracked)
        : base(weight, bias, runningMean, runningVar, numBatchesTracked)
    {
    }

    public torch.Tensor weight => At(0);
    public torch.Tensor bias => At(1);
    public torch.Tensor running_mean => At(2);
    public torch.Tensor running_var => At(3);
    public torch.Tensor num_batches_tracked => At(4);
}

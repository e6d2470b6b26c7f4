using TorchSharp;

namespace EmaGen.Shadows;

/// <summary>
/// Shadow of a normalization module with running statistics (BatchNorm*, InstanceNorm*): the affine <c>weight</c> and
/// <c>bias</c>, and the buffers <c>running_mean</c>, <c>running_var</c>, <c>num_batches_tracked</c> (tracked with
/// <see cref="EmaOptions.TrackBuffers"/>; the counter is copied, never averaged).
/// </summary>
public sealed class NormShadow
{
    /// <summary>Built by generated code, in TorchSharp's registration order.</summary>
    public NormShadow(EmaShadowEntry weight, EmaShadowEntry bias, EmaShadowEntry runningMean, EmaShadowEntry runningVar, EmaShadowEntry numBatchesTracked)
    {
        WeightEntry = weight;
        BiasEntry = bias;
        RunningMeanEntry = runningMean;
        RunningVarEntry = runningVar;
        NumBatchesTrackedEntry = numBatchesTracked;
    }

    /// <summary>The <c>weight</c> slot.</summary>
    public EmaShadowEntry WeightEntry { get; }
    /// <summary>The <c>bias</c> slot.</summary>
    public EmaShadowEntry BiasEntry { get; }
    /// <summary>The <c>running_mean</c> slot.</summary>
    public EmaShadowEntry RunningMeanEntry { get; }
    /// <summary>The <c>running_var</c> slot.</summary>
    public EmaShadowEntry RunningVarEntry { get; }
    /// <summary>The <c>num_batches_tracked</c> slot.</summary>
    public EmaShadowEntry NumBatchesTrackedEntry { get; }

    /// <summary>Shadow of <c>weight</c>.</summary>
    public torch.Tensor weight => WeightEntry.Tensor;
    /// <summary>Shadow of <c>bias</c>.</summary>
    public torch.Tensor bias => BiasEntry.Tensor;
    /// <summary>Shadow of <c>running_mean</c>.</summary>
    public torch.Tensor running_mean => RunningMeanEntry.Tensor;
    /// <summary>Shadow of <c>running_var</c>.</summary>
    public torch.Tensor running_var => RunningVarEntry.Tensor;
    /// <summary>Copy of <c>num_batches_tracked</c>.</summary>
    public torch.Tensor num_batches_tracked => NumBatchesTrackedEntry.Tensor;
}

using System;
using System.Collections.Generic;
using TorchSharp;

namespace EmaGen.Dcp;

/// <summary>Tensors a save made for itself (converted copies of the shadows), freed together once it is written.</summary>
internal sealed class TensorCopies : List<torch.Tensor>, IDisposable
{
    public void Dispose()
    {
        foreach (var t in this) t.Dispose();
        Clear();
    }
}

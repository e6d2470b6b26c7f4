using System.Collections.Generic;
using TorchSharp;

namespace EmaGen;

/// <summary>What a profile asks of the manager that keeps it (either manager), by profile index.</summary>
internal interface IProfileHost
{
    torch.Tensor ShadowOf(int profile, string name);

    TShadow GetShadow<TShadow>(int profile) where TShadow : class;

    double CurrentDecayOf(int profile);

    Dictionary<string, torch.Tensor> StateDict(int profile);

    void LoadStateDict(int profile, IReadOnlyDictionary<string, torch.Tensor> state, bool strict);
}

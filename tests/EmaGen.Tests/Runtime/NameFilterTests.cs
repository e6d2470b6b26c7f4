using System;
using System.Linq;
using EmaGen.Tests.Models;
using TorchSharp;
using TorchSharp.Modules;
using Xunit;
using static TorchSharp.torch;

namespace EmaGen.Tests.Runtime;

/// <summary>A base layer with LoRA-style adapters beside it, for "adapters only" EMA.</summary>
[EmaTracked]
public sealed partial class AdapterModel : nn.Module<Tensor, Tensor>
{
    private readonly Linear fc1 = nn.Linear(8, 8);
    private readonly Parameter fc1_lora_a = new(torch.randn(2, 8));
    private readonly Parameter fc1_lora_b = new(torch.zeros(8, 2));
    private readonly Linear fc2 = nn.Linear(8, 4);
    private readonly Parameter fc2_lora_a = new(torch.randn(2, 8));
    private readonly Parameter fc2_lora_b = new(torch.zeros(4, 2));

    public AdapterModel() : base(nameof(AdapterModel)) => RegisterComponents();

    public override Tensor forward(Tensor x) => x;
}

/// <summary><see cref="EmaOptions.Include"/> and <see cref="EmaOptions.Exclude"/> at bind time, on both managers.</summary>
public sealed class NameFilterTests
{
    private static EmaManagerBase<AdapterModel> Make(AdapterModel model, bool sharded, EmaOptions options) =>
        sharded ? new ShardedEmaManager<AdapterModel>(model, 0, 1, options) : new EmaManager<AdapterModel>(model, options);

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void AdaptersOnlyAveragesTheAdaptersAndNothingElse(bool sharded)
    {
        using var model = new AdapterModel();
        using var ema = Make(model, sharded, new EmaOptions { Decay = 0.5, Include = ["*_lora_*"] });
        Assert.Equal(new[] { "fc1_lora_a", "fc1_lora_b", "fc2_lora_a", "fc2_lora_b" }, ema.TrackedNames.Order(StringComparer.Ordinal));
        Assert.Equal(EmaExclusion.Filtered, ema.Parameters.Single(p => p.Name == "fc1.weight").Exclusion);
        Assert.Equal(EmaExclusion.None, ema.Parameters.Single(p => p.Name == "fc2_lora_b").Exclusion);
        Assert.Throws<System.Collections.Generic.KeyNotFoundException>(() => ema["fc1.weight"]);
        // The adapters are averaged; the base weights have no shadow and are not in the state dict.
        using (torch.no_grad()) model.named_parameters().Single(p => p.name == "fc1_lora_b").parameter.fill_(2f);
        ema.Update(model);
        Assert.Equal(1f, ema["fc1_lora_b"][0, 0].item<float>());
        var state = ema.ProfileList[0].StateDict();
        Assert.Equal(4, state.Count);
        Assert.DoesNotContain("fc1.weight", state.Keys);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ExcludeByGlobLeavesTheMatchesOut(bool sharded)
    {
        using var model = new AdapterModel();
        using var ema = Make(model, sharded, new EmaOptions { Exclude = ["*.bias", "fc2*"] });
        Assert.Equal(new[] { "fc1.weight", "fc1_lora_a", "fc1_lora_b" }, ema.TrackedNames.Order(StringComparer.Ordinal));
        Assert.All(ema.Parameters.Where(p => p.Name.EndsWith(".bias", StringComparison.Ordinal)), p => Assert.Equal(EmaExclusion.Filtered, p.Exclusion));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void APatternThatMatchesNothingIsAnErrorNamingIt(bool sharded)
    {
        using var model = new AdapterModel();
        var error = Assert.Throws<ArgumentException>(() => Make(model, sharded, new EmaOptions { Include = ["*_lora_*", "text_encoder.*"] }));
        Assert.Contains("EmaOptions.Include pattern 'text_encoder.*' matches no parameter", error.Message);
        var exclude = Assert.Throws<ArgumentException>(() => Make(model, sharded, new EmaOptions { Exclude = ["*.gamma"] }));
        Assert.Contains("EmaOptions.Exclude pattern '*.gamma'", exclude.Message);
    }

    [Theory]
    [InlineData("*", "a.b.c", true)]
    [InlineData("a.*", "a.b.c", true)]
    [InlineData("*.c", "a.b.c", true)]
    [InlineData("a.?.c", "a.b.c", true)]
    [InlineData("a.?.c", "a.bb.c", false)]
    [InlineData("*lora*", "blocks.0.fc1_lora_a", true)]
    [InlineData("*.bias", "blocks.0.bias_scale", false)]
    [InlineData("b*", "a.b", false)]
    [InlineData("a*b*c", "axxbyyc", true)]
    [InlineData("a*b*c", "axxbyy", false)]
    public void GlobsMatchWholeNames(string pattern, string name, bool expected) => Assert.Equal(expected, NameFilter.Matches(pattern, name));
}

/// <summary>Checkpoints record the filters; a strict load with other filters fails naming both, a non-strict one loads the shared names.</summary>
public sealed class NameFilterCheckpointTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ALoadWithOtherFiltersFailsNamingTheDifference(bool sharded)
    {
        using var folder = EmaGen.Tests.Support.TestPaths.NewTempFolder();
        using var model = new AdapterModel();
        var adapters = new EmaOptions { Decay = 0.5, Include = ["*_lora_*"] };
        using (var writer = sharded ? (EmaManagerBase<AdapterModel>)new ShardedEmaManager<AdapterModel>(model, 0, 1, adapters) : new EmaManager<AdapterModel>(model, adapters))
        {
            writer.Update(model);
            if (writer is EmaManager<AdapterModel> dense) dense.Save(folder["a"]);
            else ((ShardedEmaManager<AdapterModel>)writer).Save(folder["a"], "one", TimeSpan.FromSeconds(30));
        }
        var reader = EmaGen.Dcp.DcpReader.Open(folder["a"]);
        Assert.Equal("include=*_lora_*;exclude=", reader.ReadValue("ema._emagen.filters"));
        Assert.Null(reader.Metadata.Find("ema.fc1.weight"));

        // Same filters: loads. Other filters (or none): refused when strict, naming both, and nothing written.
        using var same = new EmaManager<AdapterModel>(model, adapters);
        same.Load(folder["a"]);
        using var other = new EmaManager<AdapterModel>(model, new EmaOptions { Decay = 0.5, Include = ["*_lora_*", "fc1.*"] });
        var before = EmaGen.Tests.Support.TensorValues.Bits(other["fc1_lora_a"]);
        var error = Assert.Throws<ArgumentException>(() => other.Load(folder["a"]));
        Assert.Contains("name filters include=*_lora_*;exclude=, this manager uses include=*_lora_*|fc1.*;exclude=", error.Message);
        Assert.Equal(before, EmaGen.Tests.Support.TensorValues.Bits(other["fc1_lora_a"]));
        using var unfiltered = new EmaManager<AdapterModel>(model, new EmaOptions { Decay = 0.5 });
        Assert.Contains("this manager uses (none)", Assert.Throws<ArgumentException>(() => unfiltered.Load(folder["a"])).Message);
        // The same filters in another order are the same filters.
        using (var twoPatterns = new EmaManager<AdapterModel>(model, new EmaOptions { Decay = 0.5, Include = ["fc1.*", "*_lora_*"] }))
        {
            twoPatterns.Save(folder["b"]);
            Assert.Equal("include=*_lora_*|fc1.*;exclude=", EmaGen.Dcp.DcpReader.Open(folder["b"]).ReadValue("ema._emagen.filters"));
        }
        using (var reordered = new EmaManager<AdapterModel>(model, new EmaOptions { Decay = 0.5, Include = ["*_lora_*", "fc1.*", "*_lora_*"] })) reordered.Load(folder["b"]);
        // Non-strict: the names both have.
        other.Load(folder["a"], strict: false);
        Assert.Equal(EmaGen.Tests.Support.TensorValues.Bits(same["fc1_lora_a"]), EmaGen.Tests.Support.TensorValues.Bits(other["fc1_lora_a"]));
    }
}

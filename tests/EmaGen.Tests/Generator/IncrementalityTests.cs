using System.Linq;
using EmaGen.Generator;
using EmaGen.Tests.Support;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Xunit;

namespace EmaGen.Tests.Generator;

/// <summary>An edit elsewhere must not re-run emission: the tracked steps report their outputs cached or unchanged.</summary>
public sealed class IncrementalityTests
{
    private const string Model = """
        using EmaGen;
        using TorchSharp;
        using TorchSharp.Modules;
        using static TorchSharp.torch;
        namespace Models;

        [EmaTracked]
        public partial class Model : nn.Module<Tensor, Tensor>
        {
            private readonly Linear fc = nn.Linear(2, 2);
            private readonly Parameter scale = new Parameter(torch.ones(2));
            public Model() : base("m") => RegisterComponents();
            public override Tensor forward(Tensor x) => fc.call(x) * scale;
        }
        """;

    [Fact]
    public void UnrelatedEditLeavesTrackedStepsCached()
    {
        var compilation = GeneratorHarness.Compile(Model, "namespace Other; public class Unrelated { public int A; }");
        var driver = GeneratorHarness.CreateDriver(trackSteps: true).RunGenerators(compilation);

        var edited = compilation.ReplaceSyntaxTree(
            compilation.SyntaxTrees.Last(),
            CSharpSyntaxTree.ParseText("namespace Other; public class Unrelated { public int A; public int B; }", GeneratorHarness.ParseOptions, path: "Input1.cs"))
            .AddSyntaxTrees(CSharpSyntaxTree.ParseText("namespace Other; public class Added { }", GeneratorHarness.ParseOptions, path: "Input2.cs"));
        driver = driver.RunGenerators(edited);

        var run = driver.GetRunResult().Results.Single();
        foreach (var name in new[] { TrackingNames.Parse, TrackingNames.Specs })
        {
            Assert.True(run.TrackedSteps.TryGetValue(name, out var steps), $"step {name} was not tracked");
            var reasons = steps.SelectMany(s => s.Outputs).Select(o => o.Reason).ToList();
            Assert.NotEmpty(reasons);
            Assert.All(reasons, r => Assert.True(r is IncrementalStepRunReason.Cached or IncrementalStepRunReason.Unchanged, $"{name}: {r}"));
        }
        Assert.All(run.TrackedOutputSteps.SelectMany(s => s.Value).SelectMany(s => s.Outputs),
            o => Assert.True(o.Reason is IncrementalStepRunReason.Cached or IncrementalStepRunReason.Unchanged, $"output step: {o.Reason}"));
    }

    [Fact]
    public void EditingTheModelReEmits()
    {
        var compilation = GeneratorHarness.Compile(Model);
        var driver = GeneratorHarness.CreateDriver(trackSteps: true).RunGenerators(compilation);
        var edited = compilation.ReplaceSyntaxTree(
            compilation.SyntaxTrees.Single(),
            CSharpSyntaxTree.ParseText(Model.Replace("private readonly Parameter scale", "private readonly Parameter gain"), GeneratorHarness.ParseOptions, path: "Input0.cs"));
        driver = driver.RunGenerators(edited);

        var run = driver.GetRunResult().Results.Single();
        var reasons = run.TrackedSteps[TrackingNames.Specs].SelectMany(s => s.Outputs).Select(o => o.Reason);
        Assert.Contains(IncrementalStepRunReason.Modified, reasons);
        Assert.Contains("\"gain\"", run.GeneratedSources.Single().SourceText.ToString());
    }
}

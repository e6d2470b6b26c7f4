using System.Linq;
using EmaGen.Tests.Support;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.Diagnostics;
using Xunit;

namespace EmaGen.Tests.Generator;

/// <summary>Every diagnostic id, with the source text and line it points at, and no code emitted for a class with errors.</summary>
public sealed class DiagnosticTests
{
    private const string Usings = """
        using EmaGen;
        using TorchSharp;
        using TorchSharp.Modules;
        using TorchSharp.Utils;
        using static TorchSharp.torch;
        namespace Models;

        """;

    // Usings occupy lines 1-6; the first line of each test's own source is line 7.
    private const int FirstLine = 7;

    [Fact]
    public void EMA001_ClassNotPartial()
    {
        var r = Run("""
            [EmaTracked]
            public class Model : nn.Module<Tensor, Tensor>
            {
                public Model() : base("m") { }
                public override Tensor forward(Tensor x) => x;
            }
            """);
        AssertSingle(r, "EMA001", "Model", FirstLine + 1, DiagnosticSeverity.Error);
        Assert.Empty(r.Generated);
    }

    [Fact]
    public void EMA002_NotAModule()
    {
        var r = Run("""
            [EmaTracked]
            public partial class Plain
            {
            }
            """);
        AssertSingle(r, "EMA002", "Plain", FirstLine + 1, DiagnosticSeverity.Error);
        Assert.Empty(r.Generated);
    }

    [Fact]
    public void EMA003_ContainingTypeNotPartial()
    {
        var r = Run("""
            public class Outer
            {
                [EmaTracked]
                public partial class Model : nn.Module<Tensor, Tensor>
                {
                    public Model() : base("m") { }
                    public override Tensor forward(Tensor x) => x;
                }
            }
            """);
        AssertSingle(r, "EMA003", "Outer", FirstLine, DiagnosticSeverity.Error);
        Assert.Empty(r.Generated);
    }

    [Fact]
    public void EMA004_GenericClass()
    {
        var r = Run("""
            [EmaTracked]
            public partial class Model<T> : nn.Module<Tensor, Tensor>
            {
                public Model() : base("m") { }
                public override Tensor forward(Tensor x) => x;
            }
            """);
        AssertSingle(r, "EMA004", "Model", FirstLine + 1, DiagnosticSeverity.Error);
        Assert.Empty(r.Generated);
    }

    // EMA005 is retired: members whose parameters only run time knows are read from TorchSharp's registered tree.
    [Theory]
    [InlineData("nn.Module<Tensor, Tensor>", false)]
    [InlineData("Sequential", false)]
    [InlineData("ModuleDict<Linear>", false)]
    [InlineData("ParameterList", false)]
    [InlineData("MultiheadAttention", false)]
    [InlineData("TransformerEncoder", false)]
    [InlineData("LSTM", false)]
    [InlineData("Untracked", true)]
    [InlineData("Untracked[]", true)]
    [InlineData("ModuleList<Untracked>", true)]
    public void MembersOnlyRunTimeKnowsAreAccepted(string declaredType, bool untrackedClass)
    {
        var r = Run($$"""
            public class Untracked : nn.Module<Tensor, Tensor>
            {
                public Untracked() : base("u") { }
                public override Tensor forward(Tensor x) => x;
            }

            [EmaTracked]
            public partial class Model : nn.Module<Tensor, Tensor>
            {
                private {{declaredType}} mystery = null!;
                public Model() : base("m") { }
                public override Tensor forward(Tensor x) => x;
            }
            """);
        Assert.Single(r.Generated);
        Assert.Empty(r.OutputErrorsAndWarnings);
        Assert.Contains("visitor.DynamicModule(", r.Generated.Values.Single());
        if (untrackedClass)
        {
            var d = AssertSingle(r, "EMA013", "mystery", FirstLine + 9, DiagnosticSeverity.Warning);
            Assert.Contains("'Models.Untracked'", d.GetMessage());
            Assert.Contains("typeof(global::Models.Untracked)", r.Generated.Values.Single());
        }
        else
        {
            Assert.Empty(r.GeneratorDiagnostics);
        }
    }

    [Fact]
    public void EMA013_UntrackedClassesCreatedInTheClassAreReportedOnceAndRootedForNativeAot()
    {
        var r = Run("""
            public class Inner : nn.Module<Tensor, Tensor>
            {
                private readonly Linear l = nn.Linear(2, 2);
                public Inner() : base("i") => RegisterComponents();
                public override Tensor forward(Tensor x) => l.call(x);
            }

            public class Block : nn.Module<Tensor, Tensor>
            {
                private readonly Inner inner = new Inner();
                public Block() : base("b") => RegisterComponents();
                public override Tensor forward(Tensor x) => inner.call(x);
            }

            [EmaTracked]
            public partial class Model : nn.Module<Tensor, Tensor>
            {
                private readonly nn.Module<Tensor, Tensor> layers = nn.Sequential(("a", new Block()), ("b", new Block()));
                public Model() : base("m") => RegisterComponents();
                public override Tensor forward(Tensor x) => layers.call(x);
            }
            """);
        Assert.Empty(r.OutputErrorsAndWarnings);
        var d = AssertSingle(r, "EMA013", "new Block()", FirstLine + 17, DiagnosticSeverity.Warning);
        Assert.Contains("add [EmaTracked] and partial to 'Models.Block'", d.GetMessage());
        // Block's fields, and those of the class it holds, are kept for TorchSharp's reflection in NativeAOT binaries.
        Assert.Contains("typeof(global::Models.Block)", r.Generated.Values.Single());
        Assert.Contains("typeof(global::Models.Inner)", r.Generated.Values.Single());
        Assert.Contains("typeof(global::TorchSharp.torch.nn.Module<global::TorchSharp.torch.Tensor, global::TorchSharp.torch.Tensor>)", r.Generated.Values.Single());
    }

    [Fact]
    public void IgnoredDynamicMemberIsAccepted()
    {
        var r = Run("""
            [EmaTracked]
            public partial class Model : nn.Module<Tensor, Tensor>
            {
                [EmaIgnore] private Sequential mystery = nn.Sequential();
                public Model() : base("m") { }
                public override Tensor forward(Tensor x) => x;
            }
            """);
        Assert.Empty(r.GeneratorDiagnostics);
        Assert.Single(r.Generated);
        Assert.Empty(r.OutputErrorsAndWarnings);
    }

    [Fact]
    public void EMA006_DuplicateName()
    {
        var r = Run("""
            [EmaTracked]
            public partial class Model : nn.Module<Tensor, Tensor>
            {
                private Parameter scale = null!;
                [ComponentName(Name = "scale")] private Parameter other = null!;
                public Model() : base("m") { }
                public override Tensor forward(Tensor x) => x;
            }
            """);
        var d = AssertSingle(r, "EMA006", "other", FirstLine + 4, DiagnosticSeverity.Error);
        Assert.Contains("'scale'", d.GetMessage());
        Assert.Empty(r.Generated);
    }

    [Fact]
    public void EMA007_AutoPropertyComponent()
    {
        var r = Run("""
            [EmaTracked]
            public partial class Model : nn.Module<Tensor, Tensor>
            {
                public Linear Head { get; } = nn.Linear(2, 2);
                public Model() : base("m") { }
                public override Tensor forward(Tensor x) => x;
            }
            """);
        var d = AssertSingle(r, "EMA007", "Head", FirstLine + 3, DiagnosticSeverity.Error);
        Assert.Contains("<Head>k__BackingField", d.GetMessage());
        Assert.Empty(r.Generated);
    }

    [Fact]
    public void EMA008_RegisterComponentsOverridden()
    {
        var r = Run("""
            [EmaTracked]
            public partial class Model : nn.Module<Tensor, Tensor>
            {
                public Model() : base("m") { }
                protected override void RegisterComponents() { }
                public override Tensor forward(Tensor x) => x;
            }
            """);
        AssertSingle(r, "EMA008", "RegisterComponents", FirstLine + 4, DiagnosticSeverity.Error);
        Assert.Empty(r.Generated);
    }

    // EMA009 is retired: base-class fields are registered and walked, private ones through [UnsafeAccessor].
    [Fact]
    public void BaseClassFieldsAreTrackedIncludingPrivateAndGenericOnes()
    {
        var r = Run("""
            public class Base<T> : nn.Module<Tensor, Tensor> where T : nn.Module<Tensor, Tensor>
            {
                protected Linear shared = nn.Linear(2, 2);
                private T inner;
                private readonly Tensor seen = torch.zeros(1);
                public Base(T inner) : base("b") => this.inner = inner;
                public override Tensor forward(Tensor x) => inner.call(x);
            }

            [EmaTracked]
            public partial class Model : Base<Linear>
            {
                private readonly Parameter own = new Parameter(torch.ones(1));
                public Model() : base(nn.Linear(2, 2)) => RegisterComponents();
            }
            """);
        Assert.Empty(r.GeneratorDiagnostics);
        Assert.Empty(r.OutputErrorsAndWarnings);
        var code = r.Generated.Values.Single();
        Assert.Contains("private static class __EmaGenBase0<T> where T : global::TorchSharp.torch.nn.Module<global::TorchSharp.torch.Tensor, global::TorchSharp.torch.Tensor>", code);
        Assert.Contains("public static extern ref T inner(global::Models.Base<T> self);", code);
        Assert.Contains("__EmaGenBase0<global::TorchSharp.Modules.Linear>.inner(module)", code);
        Assert.Contains("register_module(\"shared\", this.shared);", code);
    }

    [Fact]
    public void EMA012_NegativeShardDimension()
    {
        var r = Run("""
            [EmaTracked]
            public partial class Model : nn.Module<Tensor, Tensor>
            {
                [EmaShard(-2)] private Parameter w = null!;
                public Model() : base("m") { }
                public override Tensor forward(Tensor x) => x;
            }
            """);
        var d = AssertSingle(r, "EMA012", "EmaShard(-2)", FirstLine + 3, DiagnosticSeverity.Error);
        Assert.Contains("[EmaReplicate]", d.GetMessage());
        Assert.Empty(r.Generated);
    }

    [Fact]
    public void EMA014_ShardOnABufferIsReportedAndTheBufferStaysReplicated()
    {
        var r = Run("""
            [EmaTracked]
            public partial class Model : nn.Module<Tensor, Tensor>
            {
                [EmaShard(0)] private Tensor mask = torch.ones(4, 4);
                [EmaReplicate] private Tensor counter = torch.zeros(1);
                public Model() : base("m") { }
                public override Tensor forward(Tensor x) => x;
            }
            """);
        var d = AssertSingle(r, "EMA014", "mask", FirstLine + 3, DiagnosticSeverity.Warning);
        Assert.Contains("buffer 'mask'", d.GetMessage());
        // A buffer is visited without a shard dimension: every rank holds all of it.
        Assert.Contains("visitor.Buffer(\"mask\", module.mask, false);", r.Generated.Values.Single());
    }

    [Fact]
    public void EMA010_IgnoreWithoutEffectIsAWarningAndCodeIsStillEmitted()
    {
        var r = Run("""
            [EmaTracked]
            public partial class Model : nn.Module<Tensor, Tensor>
            {
                [EmaIgnore] private int count;
                private Parameter w = null!;
                public Model() : base("m") { }
                public override Tensor forward(Tensor x) => x;
            }
            """);
        AssertSingle(r, "EMA010", "count", FirstLine + 3, DiagnosticSeverity.Warning);
        Assert.Single(r.Generated);
    }

    [Fact]
    public async System.Threading.Tasks.Task EMA011_BaseRegisterComponentsInATrackedClass()
    {
        _source = Usings + """
            [EmaTracked]
            public partial class Model : nn.Module<Tensor, Tensor>
            {
                private Parameter w = new Parameter(torch.ones(1));
                public Model() : base("m") { base.RegisterComponents(); }
                public override Tensor forward(Tensor x) => x;
            }

            public class Untracked : nn.Module<Tensor, Tensor>
            {
                public Untracked() : base("u") { base.RegisterComponents(); }
                public override Tensor forward(Tensor x) => x;
            }
            """;
        var compilation = GeneratorHarness.Compile(_source);
        var analyzers = System.Collections.Immutable.ImmutableArray.Create<Microsoft.CodeAnalysis.Diagnostics.DiagnosticAnalyzer>(
            new EmaGen.Generator.Analyzers.ReflectionRegistrationAnalyzer());
        var diagnostics = await compilation.WithAnalyzers(analyzers).GetAnalyzerDiagnosticsAsync();
        var d = Assert.Single(diagnostics);
        Assert.Equal("EMA011", d.Id);
        Assert.Equal(DiagnosticSeverity.Warning, d.Severity);
        Assert.Equal("base.RegisterComponents()", _source.Substring(d.Location.SourceSpan.Start, d.Location.SourceSpan.Length));
        Assert.Equal(FirstLine + 4, d.Location.GetLineSpan().StartLinePosition.Line + 1);
    }

    private string _source = "";

    private GeneratorHarness.Result Run(string source)
    {
        _source = Usings + source;
        return GeneratorHarness.Run(_source);
    }

    // The generator reports file path and spans (a Location holding its syntax tree would defeat caching), so the text
    // under the span is read back from the input source.
    private Diagnostic AssertSingle(GeneratorHarness.Result result, string id, string spanText, int line, DiagnosticSeverity severity)
    {
        var d = Assert.Single(result.GeneratorDiagnostics);
        Assert.Equal(id, d.Id);
        Assert.Equal(severity, d.Severity);
        var lineSpan = d.Location.GetLineSpan();
        Assert.Equal("Input0.cs", lineSpan.Path);
        Assert.Equal(spanText, _source.Substring(d.Location.SourceSpan.Start, d.Location.SourceSpan.Length));
        Assert.Equal(line, lineSpan.StartLinePosition.Line + 1);
        Assert.False(string.IsNullOrWhiteSpace(d.GetMessage()));
        return d;
    }
}

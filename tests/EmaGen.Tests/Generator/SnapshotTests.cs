using System.Linq;
using EmaGen.Tests.Support;
using Xunit;

namespace EmaGen.Tests.Generator;

/// <summary>The emitted source for representative models, compared with checked-in snapshots, and proven to compile cleanly.</summary>
public sealed class SnapshotTests
{
    private const string Usings = """
        using EmaGen;
        using TorchSharp;
        using TorchSharp.Modules;
        using static TorchSharp.torch;

        """;

    [Fact]
    public void BareParametersAndLinear() => Check("Flat", Usings + """
        namespace Models;

        [EmaTracked]
        public partial class Flat : nn.Module<Tensor, Tensor>
        {
            private readonly Linear fc;
            private readonly Parameter scale;
            private readonly Parameter? offset;
            public Flat() : base("Flat")
            {
                fc = nn.Linear(4, 4);
                scale = new Parameter(torch.ones(4));
                RegisterComponents();
            }
            public override Tensor forward(Tensor x) => fc.call(x) * scale;
        }
        """, "Models.Flat.EmaGen.g.cs");

    [Fact]
    public void DynamicMembersAndBaseClassFields() => Check("Dynamic", Usings + """
        namespace Models;

        public class UntrackedBlock : nn.Module<Tensor, Tensor>
        {
            private readonly Linear proj = nn.Linear(4, 4);
            public UntrackedBlock() : base("UntrackedBlock") => RegisterComponents();
            public override Tensor forward(Tensor x) => proj.call(x);
        }

        public abstract class Shared : nn.Module<Tensor, Tensor>
        {
            private readonly LayerNorm norm = nn.LayerNorm(4);
            protected readonly Parameter shift = new Parameter(torch.zeros(4));
            protected Shared(string name) : base(name) { }
        }

        [EmaTracked]
        public partial class Gpt : Shared
        {
            private readonly nn.Module<Tensor, Tensor> mlp = nn.Sequential(("fc", nn.Linear(4, 16)), ("act", nn.GELU()), ("proj", nn.Linear(16, 4)));
            private readonly MultiheadAttention attention = nn.MultiheadAttention(4, 2);
            private readonly ModuleList<UntrackedBlock> blocks = new ModuleList<UntrackedBlock>(new UntrackedBlock());
            private readonly Tensor mask = torch.ones(4, 4).tril();
            public Gpt() : base("Gpt") => RegisterComponents();
            public override Tensor forward(Tensor x) => mlp.call(x) + shift;
        }
        """, "Models.Gpt.EmaGen.g.cs");

    [Fact]
    public void NestedArraysListsIgnoredAndBuffers() => Check("Nested", Usings + """
        using TorchSharp.Utils;
        namespace Models;

        [EmaTracked]
        public partial class Block : nn.Module<Tensor, Tensor>
        {
            private readonly LayerNorm norm = nn.LayerNorm(8);
            private readonly Linear proj = nn.Linear(8, 8);
            public Block() : base("Block") => RegisterComponents();
            public override Tensor forward(Tensor x) => proj.call(norm.call(x));
        }

        [EmaTracked]
        public partial class Stack : nn.Module<Tensor, Tensor>
        {
            private readonly Block[] blocks = { new Block(), new Block() };
            private readonly ModuleList<Linear> heads = new ModuleList<Linear>(nn.Linear(8, 2));
            private readonly Block? extra;
            [EmaIgnore] private readonly Parameter probe = new Parameter(torch.zeros(1));
            [ComponentName(Name = "temperature")] private readonly Parameter temp = new Parameter(torch.ones(1));
            private readonly Tensor runningMean = torch.zeros(8);
            private readonly GELU act = nn.GELU();
            private readonly int notAComponent = 3;
            public Stack() : base("Stack") => RegisterComponents();
            public override Tensor forward(Tensor x) => x;
        }
        """, "Models.Block.EmaGen.g.cs", "Models.Stack.EmaGen.g.cs");

    [Fact]
    public void NestedInternalClassInGlobalNamespace() => Check("Inner", Usings + """
        public static partial class Outer
        {
            [EmaTracked]
            internal sealed partial class Inner : nn.Module<Tensor, Tensor, Tensor>
            {
                private readonly Embedding embed = nn.Embedding(10, 4);
                public Inner() : base("Inner") => RegisterComponents();
                public override Tensor forward(Tensor x, Tensor y) => embed.call(x) + y;
            }
        }
        """, "Outer.Inner.EmaGen.g.cs");

    [Fact]
    public void BuiltinModules() => Check("Builtins", Usings + """
        namespace Models;

        [EmaTracked]
        public partial class Builtins : nn.Module<Tensor, Tensor>
        {
            private readonly Conv2d conv = nn.Conv2d(3, 4, 3);
            private readonly ConvTranspose1d deconv = nn.ConvTranspose1d(4, 4, 3);
            private readonly BatchNorm1d bn = nn.BatchNorm1d(4);
            private readonly GroupNorm gn = nn.GroupNorm(2, 4);
            private readonly Bilinear bil = nn.Bilinear(2, 2, 3);
            private readonly PReLU prelu = nn.PReLU(1);
            private readonly LSTMCell cell = nn.LSTMCell(3, 4);
            private readonly Dropout drop = nn.Dropout();
            private readonly MSELoss loss = nn.MSELoss();
            public Builtins() : base("Builtins") => RegisterComponents();
            public override Tensor forward(Tensor x) => x;
        }
        """, "Models.Builtins.EmaGen.g.cs");

    private static void Check(string snapshotPrefix, string source, params string[] expectedFiles)
    {
        var result = GeneratorHarness.Run(source);
        // EMA013 (an untracked module class) is a warning the dynamic-member snapshot deliberately provokes.
        Assert.Empty(result.GeneratorDiagnostics.Where(d => d.Id != "EMA013"));
        Assert.Empty(result.OutputErrorsAndWarnings.Select(d => d.ToString()));
        Assert.Equal(expectedFiles.OrderBy(f => f), result.Generated.Keys.OrderBy(f => f));
        foreach (var file in expectedFiles)
        {
            var name = file.Replace(".EmaGen.g.cs", "");
            Snapshot.Match(result.Generated[file], snapshotPrefix + "." + name);
        }
    }
}

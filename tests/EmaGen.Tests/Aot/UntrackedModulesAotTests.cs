using System;
using System.IO;
using System.Linq;
using System.Text.RegularExpressions;
using EmaGen.Tests.Support;
using Xunit;

namespace EmaGen.Tests.Aot;

/// <summary>
/// A trainer whose only [EmaTracked] class is the top-level model: its blocks are the user's own untouched module
/// classes (registered by TorchSharp's reflection), held in a Sequential built with <c>new</c> and in a ModuleList.
/// The same source, run under the JIT and published with NativeAOT, must list the same parameters and reach the same
/// EMA: the generator keeps those classes' fields for reflection (and says so with EMA013).
/// </summary>
[Collection(RepositoryBuilds.Name)]
public sealed class UntrackedModulesAotTests
{
    private const string Source = """
        using System;
        using System.Linq;
        using EmaGen;
        using TorchSharp;
        using TorchSharp.Modules;
        using static TorchSharp.torch;

        torch.manual_seed(3);
        using var model = new Net();
        foreach (var (name, p) in model.named_parameters()) Console.WriteLine($"parameter {name} [{string.Join(", ", p.shape)}]");
        using var ema = new EmaManager<Net>(model, 0.9);
        Console.WriteLine($"tracked {ema.Count}");
        for (int step = 0; step < 5; step++)
        {
            using (torch.no_grad()) foreach (var (_, p) in model.named_parameters()) p.add_(torch.randn_like(p));
            ema.Update(model);
        }
        foreach (var name in ema.TrackedNames) Console.WriteLine(FormattableString.Invariant($"shadow {name} {ema[name].sum().item<float>():R}"));
        Console.WriteLine(FormattableString.Invariant($"typed {ema.Shadow.blocks["b1.proj.weight"].sum().item<float>():R}"));

        // Over a million elements on two threads: the update runs as a region on LibTorch's OpenMP team, whose
        // workers call back into the binary.
        using var wide = new Wide();
        using var wideEma = new EmaManager<Wide>(wide, new EmaOptions { Decay = 0.9, Threads = 2 });
        Console.WriteLine($"tracked wide on {wideEma.UpdateThreads} threads");
        for (int step = 0; step < 3; step++)
        {
            using (torch.no_grad()) foreach (var (_, p) in wide.named_parameters()) p.add_(torch.randn_like(p));
            wideEma.Update(wide);
        }
        foreach (var name in wideEma.TrackedNames) Console.WriteLine(FormattableString.Invariant($"shadow wide.{name} {wideEma[name].sum().item<float>():R}"));
        Console.WriteLine($"tracked wide: {wideEma.UpdatePath}");

        public sealed class Inner : nn.Module<Tensor, Tensor>
        {
            private readonly Linear lin = nn.Linear(4, 4);
            public Inner() : base(nameof(Inner)) => RegisterComponents();
            public override Tensor forward(Tensor x) => lin.call(x);
        }

        public sealed class Block : nn.Module<Tensor, Tensor>
        {
            private readonly Linear proj = nn.Linear(4, 4);
            private readonly Parameter gain = new(torch.ones(4));
            private readonly Inner inner = new();
            public Block() : base(nameof(Block)) => RegisterComponents();
            public override Tensor forward(Tensor x) => inner.call(proj.call(x) * gain);
        }

        [EmaTracked]
        public sealed partial class Wide : nn.Module<Tensor, Tensor>
        {
            private readonly Linear proj = nn.Linear(1024, 1024);
            public Wide() : base(nameof(Wide)) => RegisterComponents();
            public override Tensor forward(Tensor x) => proj.call(x);
        }

        [EmaTracked]
        public sealed partial class Net : nn.Module<Tensor, Tensor>
        {
            private readonly nn.Module<Tensor, Tensor> blocks = nn.Sequential(("b0", new Block()), ("act", nn.ReLU()), ("b1", new Block()));
            private readonly ModuleList<Block> extra = new(new Block());
            private readonly Linear head = nn.Linear(4, 2);
            public Net() : base(nameof(Net)) => RegisterComponents();
            public override Tensor forward(Tensor x) => head.call(extra[0].call(blocks.call(x)));
        }
        """;

    [Fact]
    public void TopLevelOnlyTrackingGivesTheSameEmaUnderJitAndNativeAot()
    {
        using var folder = TestPaths.NewTempFolder();
        var repo = Path.GetFullPath(Path.Combine(TestPaths.TestsRoot(), "..", ".."));
        var project = folder["project"];
        Directory.CreateDirectory(project);
        File.Copy(Path.Combine(repo, "NuGet.Config"), Path.Combine(project, "NuGet.Config"));
        File.WriteAllText(Path.Combine(project, "Program.cs"), Source);
        File.WriteAllText(Path.Combine(project, "TopLevelOnly.csproj"), $"""
            <Project Sdk="Microsoft.NET.Sdk">
              <PropertyGroup>
                <OutputType>Exe</OutputType>
                <TargetFramework>net10.0</TargetFramework>
                <Nullable>enable</Nullable>
                <RuntimeIdentifier>linux-x64</RuntimeIdentifier>
                <InvariantGlobalization>true</InvariantGlobalization>
              </PropertyGroup>
              <ItemGroup>
                <ProjectReference Include="{repo}/src/Runtime/EmaGen.Runtime.csproj" />
                <ProjectReference Include="{repo}/src/Generator/EmaGen.Generator.csproj" OutputItemType="Analyzer" ReferenceOutputAssembly="false"
                                  GlobalPropertiesToRemove="PublishAot;RuntimeIdentifier;SelfContained" />
                <PackageReference Include="libtorch-cpu-linux-x64" Version="2.10.0" />
              </ItemGroup>
              <Import Project="{repo}/build/EmaGen.targets" />
            </Project>
            """);

        var build = ProcessRunner.Run("dotnet", project, 600_000, "build", "--nologo");
        Assert.True(build.ExitCode == 0, "build failed:\n" + build.Output);
        // One warning per untracked class the tracked class uses directly (Inner is only reached through Block).
        var warnings = build.Output.Split('\n').Where(l => l.Contains("warning EMA013", StringComparison.Ordinal)).Select(l => Regex.Match(l, "'([^']+)' is not").Groups[1].Value).Distinct().ToList();
        Assert.Equal(new[] { "Block" }, warnings);

        var jit = ProcessRunner.Run("dotnet", project, 600_000, "run", "--no-build");
        Assert.True(jit.ExitCode == 0, "JIT run failed:\n" + jit.Output);
        var publish = ProcessRunner.Run("dotnet", project, 600_000, "publish", "-c", "Release", "-p:PublishAot=true", "-o", folder["aot"], "--nologo");
        Assert.True(publish.ExitCode == 0, "publish failed:\n" + publish.Output);
        var aot = ProcessRunner.Run(Path.Combine(folder["aot"], "TopLevelOnly"), project, 600_000);
        Assert.True(aot.ExitCode == 0, "AOT run failed:\n" + aot.Output);

        var expected = Results(jit.Output);
        Assert.Contains("parameter blocks.b1.inner.lin.weight [4, 4]", expected);
        Assert.Contains("parameter extra.0.gain [4]", expected);
        Assert.Contains("tracked 17", expected);
        Assert.Contains("tracked wide on 2 threads", expected);
        Assert.Contains(expected, l => l.StartsWith("tracked wide: ", StringComparison.Ordinal) && l.EndsWith("on 2 threads of LibTorch's OpenMP team", StringComparison.Ordinal));
        // Bit for bit: the update kernels compute one formula without fused multiply-add, so a NativeAOT binary built
        // for baseline x64 (128-bit vectors, no FMA) gives the JIT's values on this AVX-512 machine.
        Assert.Equal(expected, Results(aot.Output));
    }

    private static System.Collections.Generic.List<string> Results(string output) => output.Split('\n').Select(l => l.Trim())
        .Where(l => l.StartsWith("parameter ", StringComparison.Ordinal) || l.StartsWith("tracked ", StringComparison.Ordinal)
            || l.StartsWith("shadow ", StringComparison.Ordinal) || l.StartsWith("typed ", StringComparison.Ordinal))
        .ToList();
}

using System.Collections.Immutable;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.CSharp.Syntax;
using Microsoft.CodeAnalysis.Diagnostics;

namespace EmaGen.Generator.Analyzers;

/// <summary>
/// Warns about <c>base.RegisterComponents()</c> inside an [EmaTracked] class: that call skips the generated,
/// reflection-free registration and runs TorchSharp's reflection-based one, which registers nothing in a NativeAOT
/// binary (the model then has no parameters and trains nothing, silently).
/// </summary>
[DiagnosticAnalyzer(LanguageNames.CSharp)]
public sealed class ReflectionRegistrationAnalyzer : DiagnosticAnalyzer
{
    public override ImmutableArray<DiagnosticDescriptor> SupportedDiagnostics { get; } =
        ImmutableArray.Create(DiagnosticDescriptors.ReflectionRegistration);

    public override void Initialize(AnalysisContext context)
    {
        context.ConfigureGeneratedCodeAnalysis(GeneratedCodeAnalysisFlags.None);
        context.EnableConcurrentExecution();
        context.RegisterCompilationStartAction(start =>
        {
            var tracked = start.Compilation.GetTypeByMetadataName("EmaGen.EmaTrackedAttribute");
            if (tracked is null) return;
            start.RegisterSyntaxNodeAction(c => Analyze(c, tracked), SyntaxKind.InvocationExpression);
        });
    }

    private static void Analyze(SyntaxNodeAnalysisContext context, INamedTypeSymbol trackedAttribute)
    {
        var invocation = (InvocationExpressionSyntax)context.Node;
        if (invocation.Expression is not MemberAccessExpressionSyntax { Expression: BaseExpressionSyntax } access
            || access.Name.Identifier.ValueText != "RegisterComponents"
            || invocation.ArgumentList.Arguments.Count != 0)
        {
            return;
        }
        var type = context.ContainingSymbol?.ContainingType;
        if (type is null) return;
        foreach (var attribute in type.GetAttributes())
        {
            if (SymbolEqualityComparer.Default.Equals(attribute.AttributeClass, trackedAttribute))
            {
                context.ReportDiagnostic(Diagnostic.Create(DiagnosticDescriptors.ReflectionRegistration, invocation.GetLocation(), type.Name));
                return;
            }
        }
    }
}

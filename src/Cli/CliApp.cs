using System;
using System.CommandLine;
using System.IO;
using EmaGen.Dcp;

namespace EmaGen.Cli;

/// <summary>
/// <c>emagen inspect | convert | verify | schedule | posthoc | export</c>. Exit codes: 0 success, 1 the input is bad (missing, corrupt, unsound
/// checkpoint; one-line error on stderr), 2 usage error.
/// </summary>
public static class CliApp
{
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var folder = new Argument<string>("dir") { Description = "A DCP checkpoint folder." };
        var json = new Option<bool>("--json") { Description = "Print JSON instead of text." };
        var inspect = new Command("inspect", "List every key: dtype, global shape, chunks (offsets, sizes, file, byte range), values, totals.") { folder, json };
        inspect.SetAction(r => Guard(stderr, () => InspectCommand.Run(r.GetValue(folder)!, r.GetValue(json), stdout)));

        var source = new Argument<string>("src") { Description = "A DCP folder, or a .safetensors file." };
        var destination = new Argument<string>("dst") { Description = "The .safetensors file, or the DCP folder, to write." };
        var convert = new Command("convert", "DCP folder -> .safetensors file (full tensors), or .safetensors file -> DCP folder.") { source, destination };
        convert.SetAction(r => Guard(stderr, () => ConvertCommand.Run(r.GetValue(source)!, r.GetValue(destination)!, stdout)));

        var verifyFolder = new Argument<string>("dir") { Description = "A DCP checkpoint folder." };
        var verify = new Command("verify", "Read every record, check CRCs, sizes and chunk tiling; exit 0 only when sound.") { verifyFolder };
        verify.SetAction(r => Guard(stderr, () => VerifyCommand.Run(r.GetValue(verifyFolder)!, stdout)));

        var spec = new Argument<string?>("schedule")
        {
            Description = "constant:D | warmup[:invGamma=..,power=..,min=..,max=..,after=..] | halflife:H[,ramp=R] | power:SIGMA_REL | power:gamma=G | startafter:N:S | every:K[:percall]:S (or use --kind)",
            Arity = ArgumentArity.ZeroOrOne,
        };
        var steps = new Option<string?>("--steps") { Description = "Comma-separated steps to show (default 1,2,10,100,1000,10000,100000)." };
        var kind = new Option<string?>("--kind") { Description = "constant | warmup | halflife | power (instead of SPEC)." };
        var decay = new Option<double?>("--decay") { Description = "constant: the decay." };
        var sigmaRel = new Option<double?>("--sigma-rel") { Description = "power: relative width σ_rel (EDM2 uses 0.05-0.10)." };
        var gamma = new Option<double?>("--gamma") { Description = "power: exponent γ instead of --sigma-rel." };
        var invGamma = new Option<double?>("--inv-gamma") { Description = "warmup: inv_gamma (default 1)." };
        var power = new Option<double?>("--power") { Description = "warmup: power (default 2/3)." };
        var min = new Option<double?>("--min") { Description = "warmup: minimum decay (default 0)." };
        var max = new Option<double?>("--max") { Description = "warmup: maximum decay (default 0.9999)." };
        var updateAfter = new Option<long?>("--update-after") { Description = "warmup: update_after_step (default 0)." };
        var halfLife = new Option<double?>("--half-life") { Description = "halflife: half-life in steps." };
        var rampUp = new Option<double?>("--ramp-up") { Description = "halflife: EDM ramp-up ratio (half-life ≤ ratio × step)." };
        var every = new Option<int?>("--every") { Description = "Update every K steps, the decay rescaled to keep the horizon." };
        var perCall = new Option<bool>("--per-call") { Description = "With --every: apply the per-step decay unchanged (ema-pytorch's behaviour)." };
        var startAfter = new Option<long?>("--start-after") { Description = "Copy the weights until step N, then start the schedule." };
        var scheduleJson = new Option<bool>("--json") { Description = "Print JSON instead of text." };
        var schedule = new Command("schedule", "Print the decay a schedule applies at chosen steps and the averaging half-life there.")
        {
            spec, steps, kind, decay, sigmaRel, gamma, invGamma, power, min, max, updateAfter, halfLife, rampUp, every, perCall, startAfter, scheduleJson,
        };
        schedule.SetAction(r => Guard(stderr, () => ScheduleCommand.Run(
            r.GetValue(spec),
            new ScheduleKindOptions(r.GetValue(kind), r.GetValue(decay), r.GetValue(sigmaRel), r.GetValue(gamma), r.GetValue(invGamma),
                r.GetValue(power), r.GetValue(min), r.GetValue(max), r.GetValue(updateAfter), r.GetValue(halfLife), r.GetValue(rampUp)),
            r.GetValue(every), r.GetValue(perCall), r.GetValue(startAfter), r.GetValue(steps), r.GetValue(scheduleJson), stdout)));

        var snapshotsDir = new Argument<string>("snapshots") { Description = "A folder of post-hoc snapshots (step-NNNNNNNNNN)." };
        var postHocSigma = new Option<string?>("--sigma-rel") { Description = "Width(s) of the EMA to synthesise: S, or S1,S2,... (then OUT/sigma-S each)." };
        var postHocStep = new Option<long?>("--step") { Description = "Step to synthesise it at (best a snapshot step); later snapshots are ignored." };
        var postHocOut = new Option<string?>("--out") { Description = "The checkpoint folder to write." };
        var postHocDType = new Option<string>("--dtype") { Description = "float32 (default), bfloat16 or float16.", DefaultValueFactory = _ => "float32" };
        var postHocPrefix = new Option<string>("--prefix") { Description = "Key prefix of the output (default 'ema.').", DefaultValueFactory = _ => EmaCheckpoint.DefaultPrefix };
        var postHoc = new Command("posthoc", "List post-hoc EMA snapshots, or synthesise the EMA of any width from them (EDM2).")
        {
            snapshotsDir, postHocSigma, postHocStep, postHocOut, postHocDType, postHocPrefix,
        };
        postHoc.SetAction(r => Guard(stderr, () => PostHocCommand.Run(r.GetValue(snapshotsDir)!, r.GetValue(postHocSigma), r.GetValue(postHocStep),
            r.GetValue(postHocOut), r.GetValue(postHocDType)!, r.GetValue(postHocPrefix)!, stdout)));

        var exportSource = new Argument<string>("src") { Description = "An EmaGen or PyTorch DCP folder, or a .safetensors file." };
        var exportOut = new Argument<string>("out") { Description = "The folder to write model.safetensors (or shards and model.safetensors.index.json) into." };
        var exportProfile = new Option<string?>("--profile") { Description = "The profile of a multi-profile EMA checkpoint (or the key prefix of a snapshot's profile)." };
        var exportDType = new Option<string?>("--dtype") { Description = "Cast floating-point tensors: bf16, fp16 or fp32 (default: as stored)." };
        var exportStrip = new Option<string?>("--strip-prefix") { Description = "Remove this prefix from every name that has it (e.g. module.)." };
        var exportAdd = new Option<string?>("--add-prefix") { Description = "Put this prefix before every name (after stripping)." };
        var exportShard = new Option<string?>("--max-shard-size") { Description = "Split into numbered shards of at most this size (5GB, 500MB, 2GiB) with an index." };
        var export = new Command("export", "Publish the EMA weights as Hugging Face style safetensors (cast, renamed, sharded).")
        {
            exportSource, exportOut, exportProfile, exportDType, exportStrip, exportAdd, exportShard,
        };
        export.SetAction(r => Guard(stderr, () => ExportCommand.Run(r.GetValue(exportSource)!, r.GetValue(exportOut)!, r.GetValue(exportProfile),
            r.GetValue(exportDType), r.GetValue(exportStrip), r.GetValue(exportAdd), r.GetValue(exportShard), stdout, stderr)));

        var root = new RootCommand("EmaGen tool: inspect, convert and verify PyTorch Distributed Checkpoint folders; print decay schedules; post-hoc EMA; export to safetensors.") { inspect, convert, verify, schedule, postHoc, export };
        var parsed = root.Parse(args);
        if (parsed.Errors.Count > 0)
        {
            foreach (var error in parsed.Errors) stderr.WriteLine("emagen: " + error.Message);
            stderr.WriteLine("usage: emagen inspect DIR [--json] | emagen convert SRC DST | emagen verify DIR | emagen schedule SPEC|--kind K ... [--steps S,...] [--every K] [--json] | emagen posthoc SNAPSHOTS [--sigma-rel S --step T --out DIR] | emagen export SRC OUT [--profile P] [--dtype bf16|fp16|fp32] [--strip-prefix S] [--add-prefix A] [--max-shard-size 5GB]");
            return 2;
        }
        return parsed.Invoke(new InvocationConfiguration { Output = stdout, Error = stderr });
    }

    // Every failure becomes one line on stderr and exit code 1: the documented ones (a bad checkpoint, a missing file,
    // a bad argument) as their message; anything else, which would be a bug, with its type so it can be reported.
    private static int Guard(TextWriter stderr, Func<int> action)
    {
        try
        {
            return action();
        }
        catch (Exception e) when (e is CheckpointFormatException or IOException or UnauthorizedAccessException or ArgumentException)
        {
            stderr.WriteLine("emagen: " + e.Message.ReplaceLineEndings(" "));
            return 1;
        }
        catch (Exception e)
        {
            stderr.WriteLine($"emagen: unexpected {e.GetType().Name}: {e.Message.ReplaceLineEndings(" ")} (please report this)");
            return 1;
        }
    }
}

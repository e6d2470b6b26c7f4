using System.Collections.Generic;

namespace EmaGen.Dcp.Pickle;

/// <summary>
/// The only globals the reader accepts (docs/dcp-format.md: table 2.2 in both module families, plus what torch.save
/// tensor records use, §3.3). Everything else is rejected by name; nothing is ever imported, instantiated or called.
/// </summary>
internal static class PickleWhitelist
{
    private const string Dcp2 = "torch.distributed.checkpoint.metadata";
    private const string Dcp113 = "torch.distributed._shard.checkpoint.metadata";
    private const string Sharded = "torch.distributed._shard.sharded_tensor.metadata";

    private static readonly Dictionary<(string, string), GlobalKind> Entries = Build();

    public static bool TryGet(string module, string name, out PickleGlobal global)
    {
        if (Entries.TryGetValue((module, name), out var kind))
        {
            global = new PickleGlobal(module, name, kind);
            return true;
        }
        global = null!;
        return false;
    }

    private static Dictionary<(string, string), GlobalKind> Build()
    {
        var e = new Dictionary<(string, string), GlobalKind>();
        foreach (var module in new[] { Dcp2, Dcp113 })
        {
            foreach (var cls in new[] { "Metadata", "TensorStorageMetadata", "ChunkStorageMetadata", "BytesStorageMetadata", "MetadataIndex" })
            {
                e[(module, cls)] = GlobalKind.DataClass;
            }
        }
        e[(Dcp2, "TensorProperties")] = GlobalKind.DataClass;
        e[(Dcp2, "StorageMeta")] = GlobalKind.DataClass;
        e[(Sharded, "TensorProperties")] = GlobalKind.DataClass;
        e[("torch.distributed.checkpoint.filesystem", "_StorageInfo")] = GlobalKind.DataClass;
        e[("torch.distributed._shard.checkpoint.filesystem", "_StorageInfo")] = GlobalKind.DataClass;
        e[(Dcp2, "_MEM_FORMAT_ENCODING")] = GlobalKind.EnumClass;
        e[(Sharded, "MEM_FORMAT_ENCODING")] = GlobalKind.EnumClass;

        foreach (var dtype in EmaGen.CheckpointDTypes.All) e[("torch", dtype.TorchName)] = GlobalKind.Constant;
        e[("torch", "strided")] = GlobalKind.Constant;
        foreach (var dtype in EmaGen.CheckpointDTypes.All)
        {
            if (dtype.StorageClass is { } storage) e[("torch", storage)] = GlobalKind.Storage;
        }
        e[("torch.storage", "UntypedStorage")] = GlobalKind.Storage;

        e[("torch", "Size")] = GlobalKind.Function;
        e[("torch.serialization", "_get_layout")] = GlobalKind.Function;
        e[("torch._utils", "_rebuild_tensor_v2")] = GlobalKind.Function;
        e[("torch._utils", "_rebuild_tensor_v3")] = GlobalKind.Function;
        e[("torch._utils", "_rebuild_parameter")] = GlobalKind.Function;
        e[("collections", "OrderedDict")] = GlobalKind.Function;
        e[("builtins", "getattr")] = GlobalKind.Function;
        foreach (var module in new[] { "pathlib", "pathlib._local" })
        {
            foreach (var cls in new[] { "PosixPath", "WindowsPath", "Path", "PurePosixPath", "PureWindowsPath" })
            {
                e[(module, cls)] = GlobalKind.Function;
            }
        }
        return e;
    }
}

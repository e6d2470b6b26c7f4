using EmaGen.Dcp.Pickle;

namespace EmaGen.Dcp;

/// <summary>Pickles a <see cref="DcpMetadata"/> as PyTorch's <c>FileSystemWriter</c> does (docs/dcp-format.md §2, §6 items 8-11).</summary>
internal static class DcpMetadataWriter
{
    private const string Metadata = "torch.distributed.checkpoint.metadata";
    private const string Sharded = "torch.distributed._shard.sharded_tensor.metadata";
    private const string FileSystem = "torch.distributed.checkpoint.filesystem";

    public static byte[] Write(DcpMetadata metadata)
    {
        bool legacy = metadata.Naming == DcpNaming.PyTorch20;
        var p = new PickleWriter();
        BeginObject(p, Metadata, "Metadata");

        p.String("state_dict_metadata").EmptyDict();
        if (metadata.Entries.Count > 0)
        {
            p.Mark();
            foreach (var entry in metadata.Entries)
            {
                p.String(entry.Key);
                if (entry is DcpTensorEntry t) WriteTensorEntry(p, t, legacy);
                else p.Global(Metadata, "BytesStorageMetadata").EmptyTuple().NewObj();
            }
            p.SetItems();
        }

        p.String("planner_data").EmptyDict();
        if (metadata.PlannerData is { Count: > 0 } planner)
        {
            p.Mark();
            foreach (var (key, path) in planner)
            {
                p.String(key).Mark();
                foreach (var part in path)
                {
                    if (part is long l) p.Int(l);
                    else if (part is int i) p.Int(i);
                    else p.String(part?.ToString() ?? "");
                }
                p.Tuple();
            }
            p.SetItems();
        }

        p.String("storage_data").EmptyDict();
        if (metadata.Storage.Count > 0)
        {
            p.Mark();
            foreach (var entry in metadata.Entries)
            {
                if (entry is DcpTensorEntry t)
                {
                    for (int index = 0; index < t.Chunks.Count; index++)
                    {
                        var chunk = t.Chunks[index];
                        BeginObject(p, Metadata, "MetadataIndex");
                        p.String("fqn").String(t.Key).String("index").Int(index).String("offset").TorchSize(chunk.Offsets);
                        EndObject(p);
                        WriteLocation(p, metadata.LocationOf(t.Key, chunk));
                    }
                }
                else
                {
                    BeginObject(p, Metadata, "MetadataIndex");
                    p.String("fqn").String(entry.Key).String("index").None();
                    EndObject(p);
                    WriteLocation(p, metadata.LocationOf(entry.Key, null));
                }
            }
            p.SetItems();
        }

        if (!legacy)
        {
            p.String("storage_meta");
            BeginObject(p, Metadata, "StorageMeta");
            p.String("checkpoint_id");
            if (metadata.CheckpointId is null) p.None(); else p.String(metadata.CheckpointId);
            p.String("save_id");
            if (metadata.SaveId is null) p.None(); else p.String(metadata.SaveId);
            p.String("load_id").None().String("modules").EmptyList();
            EndObject(p);
        }
        p.String("version").String(metadata.Version ?? "1.0.0");
        EndObject(p);
        return p.Finish();
    }

    private static void WriteTensorEntry(PickleWriter p, DcpTensorEntry t, bool legacy)
    {
        BeginObject(p, Metadata, "TensorStorageMetadata");
        p.String("properties");
        // TensorProperties: NEWOBJ, then BUILD with its 5-tuple state; the enum as EnumClass(0) works on every Python.
        p.Global(legacy ? Sharded : Metadata, "TensorProperties").EmptyTuple().NewObj();
        p.Mark().Global("torch", t.DType);
        p.Global("torch.serialization", "_get_layout").Mark().String("torch.strided").Tuple().Reduce();
        p.Bool(false);
        p.Global(legacy ? Sharded : Metadata, legacy ? "MEM_FORMAT_ENCODING" : "_MEM_FORMAT_ENCODING").Mark().Int(0).Tuple().Reduce();
        p.Bool(false).Tuple().Build();
        p.String("size").TorchSize(t.Size);
        p.String("chunks").EmptyList();
        if (t.Chunks.Count > 0)
        {
            p.Mark();
            foreach (var chunk in t.Chunks)
            {
                BeginObject(p, Metadata, "ChunkStorageMetadata");
                p.String("offsets").TorchSize(chunk.Offsets).String("sizes").TorchSize(chunk.Sizes);
                EndObject(p);
            }
            p.Appends();
        }
        EndObject(p);
    }

    private static void WriteLocation(PickleWriter p, DcpStorageLocation location)
    {
        BeginObject(p, FileSystem, "_StorageInfo");
        p.String("relative_path").String(location.RelativePath).String("offset").Int(location.Offset).String("length").Int(location.Length);
        EndObject(p);
    }

    // A dataclass instance: cls.__new__(cls), then BUILD with its __dict__ (keys between Mark and SetItems).
    private static void BeginObject(PickleWriter p, string module, string name) =>
        p.Global(module, name).EmptyTuple().NewObj().EmptyDict().Mark();

    private static void EndObject(PickleWriter p) => p.SetItems().Build();
}

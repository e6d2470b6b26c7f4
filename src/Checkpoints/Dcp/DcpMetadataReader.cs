using System;
using System.Collections.Generic;
using EmaGen.Dcp.Pickle;

namespace EmaGen.Dcp;

/// <summary>
/// Decodes a <c>.metadata</c> pickle into a <see cref="DcpMetadata"/>, accepting the 2.x and 1.13 module families, 3 to
/// 5 Metadata fields, enums by value or by name, offsets as torch.Size or tuples, and extra fields it does not know.
/// </summary>
internal static class DcpMetadataReader
{
    public static DcpMetadata Read(byte[] bytes, string source)
    {
        var root = SafePickleReader.Read(bytes, source);
        var reader = new Context(source);
        try
        {
            return reader.Metadata(root);
        }
        catch (OverflowException e)
        {
            throw new CheckpointFormatException($"{source}: a size or offset overflows: {e.Message}", e);
        }
    }

    private sealed class Context
    {
        private readonly string _source;

        public Context(string source) => _source = source;

        public DcpMetadata Metadata(object? root)
        {
            var obj = Object(root, "Metadata", "the root object");
            var state = State(obj, "Metadata");
            var metadata = new DcpMetadata
            {
                Naming = obj.Type.Module.Contains("._shard.", StringComparison.Ordinal) ? DcpNaming.PyTorch113 : DcpNaming.PyTorch20,
            };

            foreach (var (key, value) in Dict(Field(state, "state_dict_metadata", "Metadata"), "state_dict_metadata").Items)
            {
                string fqn = key as string ?? throw Error("a state_dict_metadata key is not a string");
                var entryObject = Object(value, null, $"state_dict_metadata['{fqn}']");
                metadata.Entries.Add(entryObject.Type.Name switch
                {
                    "TensorStorageMetadata" => TensorEntry(fqn, entryObject, metadata),
                    "BytesStorageMetadata" => new DcpBytesEntry(fqn),
                    var other => throw Error($"state_dict_metadata['{fqn}'] is a {other}"),
                });
            }

            if (state.TryGet("planner_data", out var planner) && planner is PickleDict plannerDict)
            {
                metadata.PlannerData = new Dictionary<string, object?[]>();
                foreach (var (key, value) in plannerDict.Items)
                {
                    if (key is string k && value is PickleTuple path) metadata.PlannerData[k] = path.Items;
                }
            }

            if (state.TryGet("storage_data", out var storageData) && storageData is not null)
            {
                foreach (var (key, value) in Dict(storageData, "storage_data").Items)
                {
                    var index = State(Object(key, "MetadataIndex", "a storage_data key"), "MetadataIndex");
                    string fqn = Field(index, "fqn", "MetadataIndex") as string ?? throw Error("MetadataIndex.fqn is not a string");
                    string? offsets = index.TryGet("offset", out var offset) && offset is not null ? string.Join(",", Longs(offset, $"MetadataIndex('{fqn}').offset")) : null;
                    var info = State(Object(value, "_StorageInfo", $"storage_data['{fqn}']"), "_StorageInfo");
                    var transforms = new List<string>();
                    if (info.TryGet("transform_descriptors", out var t) && t is List<object?> list)
                    {
                        foreach (var d in list) transforms.Add(d as string ?? throw Error("a transform descriptor is not a string"));
                    }
                    metadata.Storage[(fqn, offsets)] = new DcpStorageLocation(
                        Field(info, "relative_path", "_StorageInfo") as string ?? throw Error($"_StorageInfo('{fqn}').relative_path is not a string"),
                        Long(Field(info, "offset", "_StorageInfo"), $"_StorageInfo('{fqn}').offset"),
                        Long(Field(info, "length", "_StorageInfo"), $"_StorageInfo('{fqn}').length"),
                        transforms);
                }
            }

            CheckDistinctItems(metadata);

            if (state.TryGet("storage_meta", out var storageMeta) && storageMeta is PickleObject meta && meta.State is PickleDict metaState)
            {
                metadata.Naming = metadata.Naming == DcpNaming.PyTorch20 ? DcpNaming.PyTorch23 : metadata.Naming;
                if (metaState.TryGet("checkpoint_id", out var id)) metadata.CheckpointId = id as string;
                if (metaState.TryGet("save_id", out var saveId)) metadata.SaveId = saveId as string;
            }
            if (state.TryGet("version", out var version)) metadata.Version = version as string;
            return metadata;
        }

        // Every item a DCP writer (PyTorch's or EmaGen's) stores has bytes of its own. Two keys whose items share bytes are
        // damage, typically one offset changed onto another item: refused here, or a key would silently read another's value.
        private void CheckDistinctItems(DcpMetadata metadata)
        {
            var items = new List<((string Key, string? Offsets) Index, DcpStorageLocation Location)>(metadata.Storage.Count);
            foreach (var (index, location) in metadata.Storage)
            {
                if (location.Offset < 0 || location.Length < 0) throw Error($"the item of '{index.Key}' has offset {location.Offset} and length {location.Length}");
                items.Add((index, location));
            }
            items.Sort((a, b) =>
            {
                int byFile = string.CompareOrdinal(a.Location.RelativePath, b.Location.RelativePath);
                return byFile != 0 ? byFile : a.Location.Offset.CompareTo(b.Location.Offset);
            });
            for (int i = 1; i < items.Count; i++)
            {
                var (prevIndex, prev) = items[i - 1];
                var (index, location) = items[i];
                if (prev.RelativePath == location.RelativePath && location.Offset < prev.Offset + prev.Length)
                {
                    throw Error($"the items of '{prevIndex.Key}' and '{index.Key}' share bytes of '{location.RelativePath}' (from {location.Offset}); every item has bytes of its own");
                }
            }
        }

        private DcpTensorEntry TensorEntry(string fqn, PickleObject obj, DcpMetadata metadata)
        {
            var state = State(obj, $"TensorStorageMetadata('{fqn}')");
            var properties = Object(Field(state, "properties", "TensorStorageMetadata"), "TensorProperties", $"'{fqn}' properties");
            if (properties.Type.Module == "torch.distributed.checkpoint.metadata") metadata.Naming = DcpNaming.PyTorch23;
            string dtype = properties.State switch
            {
                PickleTuple { Count: >= 1 } tuple when tuple[0] is PickleGlobal g => g.Name,
                PickleDict dict when dict.TryGet("dtype", out var d) && d is PickleGlobal g => g.Name,
                _ => throw Error($"'{fqn}' TensorProperties has no dtype"),
            };
            var size = Longs(Field(state, "size", "TensorStorageMetadata"), $"'{fqn}' size");
            var chunks = new List<DcpChunk>();
            if (Field(state, "chunks", "TensorStorageMetadata") is not List<object?> list) throw Error($"'{fqn}' chunks is not a list");
            foreach (var c in list)
            {
                var chunkState = State(Object(c, "ChunkStorageMetadata", $"a chunk of '{fqn}'"), "ChunkStorageMetadata");
                var offsets = Longs(Field(chunkState, "offsets", "ChunkStorageMetadata"), $"'{fqn}' chunk offsets");
                var sizes = Longs(Field(chunkState, "sizes", "ChunkStorageMetadata"), $"'{fqn}' chunk sizes");
                if (offsets.Length != size.Length || sizes.Length != size.Length)
                {
                    throw Error($"a chunk of '{fqn}' has {offsets.Length}/{sizes.Length} dimensions, the tensor {size.Length}");
                }
                for (int d = 0; d < size.Length; d++)
                {
                    if (offsets[d] < 0 || sizes[d] < 0 || offsets[d] > size[d] || sizes[d] > size[d] - offsets[d])
                    {
                        throw Error($"a chunk of '{fqn}' at ({string.Join(",", offsets)}) size ({string.Join(",", sizes)}) lies outside ({string.Join(",", size)})");
                    }
                }
                chunks.Add(new DcpChunk(offsets, sizes));
            }
            foreach (var d in size) if (d < 0) throw Error($"'{fqn}' has a negative dimension");
            if (ChunkOverlap.Find(chunks) is var (a, b))
            {
                throw Error($"chunks of '{fqn}' at ({a.OffsetsKey}) size ({string.Join(",", a.Sizes)}) and at ({b.OffsetsKey}) size ({string.Join(",", b.Sizes)}) overlap");
            }
            var entry = new DcpTensorEntry(fqn, dtype, size, chunks);
            // A shape whose element count overflows a long fails here (checked, reported by Read), so every later use of
            // Numel is safe.
            _ = entry.Numel;
            return entry;
        }

        private PickleObject Object(object? value, string? expectedClass, string what)
        {
            if (value is not PickleObject obj) throw Error($"{what} is {SafePickleReader.Describe(value)}, expected {expectedClass ?? "a DCP metadata object"}");
            if (expectedClass is not null && obj.Type.Name != expectedClass) throw Error($"{what} is a {obj.Type.Name}, expected {expectedClass}");
            return obj;
        }

        private PickleDict State(PickleObject obj, string what) =>
            obj.State as PickleDict ?? throw Error($"{what} has no field dictionary");

        private object? Field(PickleDict state, string name, string owner) =>
            state.TryGet(name, out var value) ? value : throw Error($"{owner} has no field '{name}'");

        private PickleDict Dict(object? value, string what) =>
            value as PickleDict ?? throw Error($"{what} is {SafePickleReader.Describe(value)}, expected a dict");

        private long[] Longs(object? value, string what)
        {
            object?[] items = value switch
            {
                TorchSize s => Array.ConvertAll(s.Dims, d => (object?)d),
                PickleTuple t => t.Items,
                _ => throw Error($"{what} is {SafePickleReader.Describe(value)}, expected a shape"),
            };
            var result = new long[items.Length];
            for (int i = 0; i < items.Length; i++) result[i] = Long(items[i], what);
            return result;
        }

        private long Long(object? value, string what) =>
            value is long l ? l : throw Error($"{what} is {SafePickleReader.Describe(value)}, expected an integer");

        private CheckpointFormatException Error(string message) => new($"{_source}: {message}.");
    }
}

"""Makes Debian's PyTorch 1.13 importable on Python 3.11 and able to read DCP metadata written with 2.x class names.

1. torch 1.13's torch/distributed/_shard/sharded_tensor/metadata.py declares a dataclass field with a mutable default,
   which Python 3.11 rejects; dataclasses._get_field is wrapped to turn such a default into a default_factory.
2. `alias_dcp2_modules()` maps the 2.x module names (torch.distributed.checkpoint.metadata / .filesystem) onto the 1.13
   classes, so that pickle finds Metadata, TensorProperties, _MEM_FORMAT_ENCODING, _StorageInfo, and a minimal
   StorageMeta (added in 2.4, unknown to 1.13).
"""
import dataclasses as _dc
import sys
import types

_orig_get_field = _dc._get_field


def _patched_get_field(cls, a_name, a_type, *rest):
    try:
        return _orig_get_field(cls, a_name, a_type, *rest)
    except ValueError as e:
        if "mutable default" not in str(e):
            raise
        default = cls.__dict__.get(a_name)
        if isinstance(default, _dc.Field):
            d = default.default
            default.default = _dc.MISSING
            default.default_factory = (lambda d=d: d)
        else:
            setattr(cls, a_name, _dc.field(default_factory=(lambda d=default: d)))
        return _orig_get_field(cls, a_name, a_type, *rest)


_dc._get_field = _patched_get_field


def alias_dcp2_modules():
    import torch.distributed._shard.checkpoint.metadata as meta113
    import torch.distributed._shard.checkpoint.filesystem as fs113
    import torch.distributed._shard.sharded_tensor.metadata as st113

    class StorageMeta:
        pass

    meta = types.ModuleType("torch.distributed.checkpoint.metadata")
    for name in ("Metadata", "TensorStorageMetadata", "ChunkStorageMetadata", "BytesStorageMetadata", "MetadataIndex"):
        setattr(meta, name, getattr(meta113, name))
    meta.TensorProperties = st113.TensorProperties
    meta._MEM_FORMAT_ENCODING = st113.MEM_FORMAT_ENCODING
    meta.StorageMeta = StorageMeta
    fs = types.ModuleType("torch.distributed.checkpoint.filesystem")
    fs._StorageInfo = fs113._StorageInfo
    package = types.ModuleType("torch.distributed.checkpoint")
    package.metadata = meta
    package.filesystem = fs
    sys.modules.setdefault("torch.distributed.checkpoint", package)
    sys.modules["torch.distributed.checkpoint.metadata"] = meta
    sys.modules["torch.distributed.checkpoint.filesystem"] = fs

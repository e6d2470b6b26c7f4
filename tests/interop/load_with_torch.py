#!/usr/bin/env python3
"""Loads a DCP folder written by EmaGen with real PyTorch 1.13 and compares every value exactly.

    /usr/bin/python3 tests/interop/load_with_torch.py CHECKPOINT_DIR EXPECTED_JSON

EXPECTED_JSON maps each key to {"dtype": "float32", "shape": [...], "values": [flat values]} for tensors, or to
{"value": ...} for non-tensor values. Two independent checks:
  1. every tensor record (each storage_data item) loads with torch.load(..., weights_only=True) and equals its chunk;
  2. the whole folder loads with torch.distributed._shard.checkpoint.load_state_dict(..., no_dist=True) (2.x class
     names aliased to the 1.13 classes, see torch113_shim.py) into zero tensors, which then equal the expected values.
Prints "OK ..." and exits 0, or prints the first mismatch and exits 1.
"""
import io
import math
import json
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch113_shim

import torch
import torch.distributed._shard.checkpoint as dcp13
from torch.distributed._shard.checkpoint import FileSystemReader

torch113_shim.alias_dcp2_modules()


def expected_tensor(spec):
    dtype = getattr(torch, spec["dtype"])
    values = spec["values"]
    if dtype == torch.bool:
        t = torch.tensor([bool(v) for v in values], dtype=torch.bool)
    else:
        t = torch.tensor(values, dtype=torch.float64 if dtype.is_floating_point else torch.int64).to(dtype)
    return t.reshape(spec["shape"])


def fail(message):
    print("MISMATCH: " + message)
    sys.exit(1)


def same_value(value, spec):
    # JSON has no NaN: the test writes {"nan": true} for a float that must be NaN (a decay that does not exist).
    if spec.get("nan"):
        return isinstance(value, float) and math.isnan(value)
    return value == spec["value"]


def main():
    folder, expected_path = sys.argv[1], sys.argv[2]
    with open(expected_path) as f:
        expected = json.load(f)
    with open(os.path.join(folder, ".metadata"), "rb") as f:
        metadata = pickle.load(f)

    records = 0
    for index, info in metadata.storage_data.items():
        entry = metadata.state_dict_metadata[index.fqn]
        with open(os.path.join(folder, info.relative_path), "rb") as f:
            f.seek(info.offset)
            blob = f.read(info.length)
        if type(entry).__name__ == "TensorStorageMetadata":
            t = torch.load(io.BytesIO(blob), weights_only=True)
            full = expected_tensor(expected[index.fqn])
            box = full
            for d, (o, s) in enumerate(zip(index.offset, t.shape)):
                box = box.narrow(d, o, s)
            if t.dtype != full.dtype or not torch.equal(t, box):
                fail(f"record {index.fqn} at {tuple(index.offset)}: {t} != {box}")
            records += 1
        else:
            value = torch.load(io.BytesIO(blob))
            if not same_value(value, expected[index.fqn]):
                fail(f"value {index.fqn}: {value!r} != {expected[index.fqn]!r}")

    target = {}
    for key, spec in expected.items():
        target[key] = torch.zeros(spec["shape"], dtype=getattr(torch, spec["dtype"])) if "dtype" in spec else None
    dcp13.load_state_dict(target, FileSystemReader(folder), no_dist=True)
    for key, spec in expected.items():
        if "dtype" in spec:
            if not torch.equal(target[key], expected_tensor(spec)):
                fail(f"load_state_dict {key}: {target[key]} != {expected_tensor(spec)}")
        elif not same_value(target[key], spec):
            fail(f"load_state_dict {key}: {target[key]!r} != {spec!r}")
    print(f"OK {records} tensor records and {len(expected)} keys match (torch {torch.__version__})")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Loads a Hugging Face style safetensors export with real PyTorch (json + struct + torch.frombuffer, no safetensors
package needed) and compares it with what EmaGen expected.

    /usr/bin/python3 tests/interop/load_safetensors.py EXPORT_DIR EXPECTED_JSON

EXPECTED_JSON maps each tensor name to {"dtype": "bfloat16", "shape": [...], "values": [flat values as float]}.
EXPORT_DIR holds model.safetensors, or model-0000k-of-0000n.safetensors shards and model.safetensors.index.json: then
the index must name every tensor of the shards exactly once, in the file that holds it, and metadata.total_size must be
the sum of the tensors' bytes. Every file's __metadata__ must say {"format": "pt"}.
Prints "OK ..." and exits 0, or prints the first mismatch and exits 1.
"""
import json
import math
import os
import struct
import sys

import torch

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def fail(message):
    print("MISMATCH " + message)
    sys.exit(1)


def load(path):
    with open(path, "rb") as f:
        data = f.read()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    meta = header.pop("__metadata__", None)
    if meta != {"format": "pt"}:
        fail(f"{path}: __metadata__ is {meta}")
    body = data[8 + length:]
    tensors = {}
    for name, spec in header.items():
        begin, end = spec["data_offsets"]
        dtype = DTYPES[spec["dtype"]]
        if end == begin:
            t = torch.empty(spec["shape"], dtype=dtype)
        else:
            t = torch.frombuffer(bytearray(body[begin:end]), dtype=dtype).reshape(spec["shape"])
        tensors[name] = t
    return tensors


def main():
    folder, expected_path = sys.argv[1], sys.argv[2]
    with open(expected_path) as f:
        expected = json.load(f)
    index_path = os.path.join(folder, "model.safetensors.index.json")
    tensors = {}
    if os.path.exists(index_path):
        with open(index_path) as f:
            index = json.load(f)
        files = sorted(set(index["weight_map"].values()))
        total = 0
        for file in files:
            for name, t in load(os.path.join(folder, file)).items():
                if name in tensors:
                    fail(f"{name} is in two shards")
                if index["weight_map"].get(name) != file:
                    fail(f"the index puts {name} in {index['weight_map'].get(name)}, it is in {file}")
                tensors[name] = t
                total += t.numel() * t.element_size()
        if set(index["weight_map"]) != set(tensors):
            fail(f"the index names {sorted(set(index['weight_map']) ^ set(tensors))[:5]} that no shard holds, or misses them")
        if index["metadata"]["total_size"] != total:
            fail(f"total_size {index['metadata']['total_size']}, the tensors hold {total} bytes")
    else:
        tensors = load(os.path.join(folder, "model.safetensors"))
    if set(tensors) != set(expected):
        fail(f"names differ: {sorted(set(tensors) ^ set(expected))[:5]}")
    for name, spec in expected.items():
        t = tensors[name]
        if str(t.dtype) != "torch." + spec["dtype"]:
            fail(f"{name}: dtype {t.dtype}, expected {spec['dtype']}")
        if list(t.shape) != spec["shape"]:
            fail(f"{name}: shape {list(t.shape)}, expected {spec['shape']}")
        got = t.double().flatten().tolist()
        for i, (a, b) in enumerate(zip(got, spec["values"])):
            if not (a == b or (math.isnan(a) and math.isnan(b))):
                fail(f"{name}[{i}]: {a}, expected {b}")
    print(f"OK {len(tensors)} tensors")


if __name__ == "__main__":
    main()

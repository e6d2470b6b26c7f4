#!/usr/bin/env python3
"""Writes the DCP fixtures EmaGen's reader tests use, with real PyTorch 1.13 (Debian's python3-torch).

    /usr/bin/python3 tests/interop/make_fixtures.py tests/EmaGen.Tests/Fixtures/dcp-torch113

Produces per_item/ (one file per item, the 1.13 default), single_file/ (one file per rank), sharded_2rank/ (two gloo
ranks on CPU: a 5x3 ShardedTensor split 3+2 rows, a replicated tensor and an int) and expected.json with every value.
Values are deterministic (arange based); re-running reproduces the data files byte for byte.
"""
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch113_shim  # noqa: F401  (must come before torch.distributed imports)

import torch
import torch.distributed as dist
import torch.distributed._shard.checkpoint as dcp13
from torch.distributed._shard.checkpoint import FileSystemReader, FileSystemWriter

OUT = os.path.abspath(sys.argv[1])


def state_dict():
    return {
        "f32": torch.arange(6, dtype=torch.float32).reshape(2, 3) + 0.5,
        "bf16": torch.tensor([1.0, -2.0, 0.5, 3.25], dtype=torch.bfloat16),
        "f16": torch.tensor([[1.0, 2.0], [-0.5, 65504.0]], dtype=torch.float16),
        "i64": torch.tensor([1, -2, 3_000_000_000], dtype=torch.int64),
        "zero_dim": torch.tensor(3.5),
        "transposed": torch.arange(6, dtype=torch.float32).reshape(2, 3).t(),  # stored non-contiguous
        "sliced": torch.arange(10, dtype=torch.int32)[2:5],
        "empty": torch.zeros(0, 3),
        "u8": torch.tensor([0, 255, 7], dtype=torch.uint8),
        "b": torch.tensor([True, False, True]),
        "f64": torch.tensor([1.0 / 3.0], dtype=torch.float64),
        "step": 42,
        "lr": 0.001,
        "meta": {"name": "adam", "betas": (0.9, 0.999)},
    }


def save(dirname, single_file):
    path = os.path.join(OUT, dirname)
    shutil.rmtree(path, ignore_errors=True)
    sd = state_dict()
    dcp13.save_state_dict(sd, FileSystemWriter(path, single_file_per_rank=single_file), no_dist=True)
    return sd


def sharded_worker(rank, world, path):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = "29531"
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed._shard import sharded_tensor
    from torch.distributed._shard.sharding_spec import ChunkShardingSpec
    spec = ChunkShardingSpec(dim=0, placements=[f"rank:{r}/cpu" for r in range(world)])
    st = sharded_tensor.empty(spec, 5, 3, dtype=torch.float32)
    full = torch.arange(15, dtype=torch.float32).reshape(5, 3)
    for shard in st.local_shards():
        o, s = shard.metadata.shard_offsets, shard.metadata.shard_sizes
        shard.tensor.copy_(full[o[0]:o[0] + s[0], o[1]:o[1] + s[1]])
    sd = {"sharded.weight": st, "replicated.bias": torch.tensor([10.0, 20.0, 30.0]), "step": 7}
    dcp13.save_state_dict(sd, FileSystemWriter(path, single_file_per_rank=True))
    dist.barrier()
    dist.destroy_process_group()


def describe(value):
    if isinstance(value, torch.Tensor):
        return {"dtype": str(value.dtype).replace("torch.", ""), "shape": list(value.shape),
                "values": value.double().flatten().tolist() if value.dtype != torch.bool else value.int().flatten().tolist()}
    if isinstance(value, tuple):
        return [describe(v) for v in value]
    if isinstance(value, dict):
        return {k: describe(v) for k, v in value.items()}
    return value


def main():
    os.makedirs(OUT, exist_ok=True)
    sd = save("per_item", single_file=False)
    save("single_file", single_file=True)
    path = os.path.join(OUT, "sharded_2rank")
    shutil.rmtree(path, ignore_errors=True)
    import torch.multiprocessing as mp
    mp.spawn(sharded_worker, args=(2, path), nprocs=2, join=True)
    # 1.13's own loader reads back what it wrote.
    target = {k: (torch.zeros_like(v) if isinstance(v, torch.Tensor) else None) for k, v in sd.items()}
    dcp13.load_state_dict(target, FileSystemReader(os.path.join(OUT, "single_file")), no_dist=True)
    expected = {
        "torch": torch.__version__,
        "nodist": {k: describe(v) for k, v in sd.items()},
        "sharded_2rank": {
            "sharded.weight": describe(torch.arange(15, dtype=torch.float32).reshape(5, 3)),
            "replicated.bias": describe(torch.tensor([10.0, 20.0, 30.0])),
            "step": 7,
        },
    }
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
    print("fixtures written to", OUT)


if __name__ == "__main__":
    main()

"""`distributed`: the helpers that need a process group, on real gloo processes."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from transformer_kit.distributed import (
    DistributedContext,
    all_reduce_mean,
    broadcast_from_main,
    init_distributed,
    resolve_device,
    shutdown_distributed,
)


def test_a_single_process_keeps_its_own_values():
    context = DistributedContext()
    assert broadcast_from_main({"a": [1, 2]}, context) == {"a": [1, 2]}
    assert all_reduce_mean({"loss": 2.5, "step": 3}, context) == {"loss": 2.5, "step": 3}


def test_resolve_device_names_what_it_refuses(monkeypatch):
    import transformer_kit.distributed as module

    assert doctest.testmod(module).attempted >= 1 and doctest.testmod(module).failed == 0
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"--device='tpu' is not a device; use 'auto', 'cpu'"):
        resolve_device("tpu", name="--device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"device='cuda:1' needs CUDA, which is not available"):
        resolve_device("cuda:1")
    with pytest.raises(ValueError, match=r"device='mps' needs Apple's MPS backend"):
        resolve_device("mps")
    # A script learns of it where it starts, before it writes anything (examples/train_text.py).
    with pytest.raises(ValueError, match=r"init_distributed: device='cuda' needs CUDA"):
        init_distributed("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"device='cuda:2' names a CUDA device this machine lacks"):
        resolve_device("cuda:2")


def _rank(rank: int, world: int, folder: str) -> None:
    store = dist.FileStore(str(Path(folder) / "store"), world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    context = DistributedContext(rank=rank, world_size=world, local_rank=rank)
    # Each rank proposes its own answer; all must act on rank 0's, None included.
    got = {
        "decision": broadcast_from_main(f"rank {rank} says stop", context),
        "none": broadcast_from_main(None if rank == 0 else "refuse", context),
        "mean": all_reduce_mean({"loss": float(rank), "step": 4}, context),
    }
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(got))
    shutdown_distributed()


@pytest.mark.slow
def test_every_rank_gets_rank_0s_value(tmp_path):
    mp.spawn(_rank, args=(3, str(tmp_path)), nprocs=3, join=True)
    for rank in range(3):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got == {
            "decision": "rank 0 says stop",
            "none": None,
            "mean": {"loss": 1.0, "step": 4},
        }, rank

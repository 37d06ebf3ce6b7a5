"""`distributed`: the helpers that need a process group, on real gloo processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from transformer_kit.distributed import (
    DistributedContext,
    all_reduce_mean,
    broadcast_from_main,
    shutdown_distributed,
)


def test_a_single_process_keeps_its_own_values():
    context = DistributedContext()
    assert broadcast_from_main({"a": [1, 2]}, context) == {"a": [1, 2]}
    assert all_reduce_mean({"loss": 2.5, "step": 3}, context) == {"loss": 2.5, "step": 3}


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

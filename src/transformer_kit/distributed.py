"""torchrun helpers: who am I, set up the process group, and average metrics across ranks.

Under `torchrun --nproc_per_node=N`, the environment variables RANK, WORLD_SIZE and LOCAL_RANK
tell each process its place; a plain `python script.py` is world size 1 and none of this
does anything.
    >>> DistributedContext().world_size
    1
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar, cast

import torch
import torch.distributed as dist

__all__ = [
    "DistributedContext",
    "all_reduce_mean",
    "broadcast_from_main",
    "init_distributed",
    "resolve_device",
    "shutdown_distributed",
]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class DistributedContext:
    """The place of this process in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs and checkpoints; the others only train."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str | torch.device, *, name: str = "device") -> torch.device:
    """The torch device ``device`` names ("auto": CUDA when present, else CPU), or an error.

    Refused, with ``name`` in the message: a name torch does not know, and a CUDA or MPS device
    this machine lacks, a CUDA index beyond its device count included.

        >>> resolve_device("cpu")
        device(type='cpu')

    Raises:
        ValueError: naming ``name``, the value and what to use instead.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"{name}={device!r} is not a device; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"{name}={device!r} needs CUDA, which is not available here "
            "(torch.cuda.is_available() is False); use 'cpu', or 'auto' for CUDA when present"
        )
    if resolved.type == "cuda" and resolved.index is not None:
        count = torch.cuda.device_count()
        if resolved.index >= count:
            raise ValueError(
                f"{name}={device!r} names a CUDA device this machine lacks: it has {count} "
                f"(cuda:0 to cuda:{count - 1}); use one of them or 'cuda'"
            )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"{name}={device!r} needs Apple's MPS backend, which is not available "
            "here (torch.backends.mps.is_available() is False); use 'cpu' or 'auto'"
        )
    return resolved


def init_distributed(device: str | torch.device = "cpu") -> DistributedContext:
    """Read torchrun's environment and initialise the default process group if needed.

    ``device`` ("auto", "cpu", "cuda", ...) is checked first with `resolve_device`, so a
    script that starts here learns of a device this machine lacks before it writes anything.
    Uses nccl for CUDA devices and gloo otherwise. With no torchrun environment (or
    WORLD_SIZE=1) this returns the single-process context and starts nothing. Otherwise it
    returns once every rank has started the group (a barrier: torch's own start-up waits for
    the others only with gloo), so what a script checked before calling it was checked on
    every rank before any rank goes on to write.

    Raises:
        ValueError: if ``device`` names no device, or one this machine lacks.
    """
    resolved = resolve_device(device, name="init_distributed: device")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        dist.barrier(device_ids=[local_rank] if backend == "nccl" else None)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank)


def broadcast_from_main(value: _T, context: DistributedContext) -> _T:
    """Rank 0's `value` on every rank (the value itself for a single process).

    Collective: every rank calls it. The value must pickle; for a decision that ranks might
    see differently (a file rank 0 just wrote), so that all act on rank 0's.
    """
    if not context.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return cast(_T, box[0])


def all_reduce_mean(
    metrics: Mapping[str, float], context: DistributedContext, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """Average each metric over all ranks (identity for a single process).

    Keys keep their order; an int whose mean is a whole number stays an int.
    """
    if not context.enabled or not metrics:
        return dict(metrics)
    keys = list(metrics)  # every rank builds its metrics in the same order
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    values /= context.world_size
    # Counts that agree on every rank (step, epoch, bad steps) stay integers.
    return {
        key: int(mean) if isinstance(metrics[key], int) and mean.is_integer() else mean
        for key, mean in zip(keys, values.tolist(), strict=True)
    }


def shutdown_distributed() -> None:
    """Wait for every rank, then destroy the default process group; a no-op without one.

    Call it once at the end of a torchrun script, after `Trainer.fit()` (which lets go of its
    DDP wrapper) and after dropping any other object that holds the group. A process that exits
    with its gloo group still alive can abort in teardown ("terminate called without an active
    exception", exit code -6), and a gloo group whose last holder is collected later can hang:
    its destructor waits, holding the GIL, for a worker thread that waits for the GIL.
    """
    if dist.is_initialized():
        gc.collect()  # groups held only by garbage cycles go now, while every rank is alive
        dist.barrier()  # no rank tears down while another is still in a collective
        # Release the GIL for a moment: gloo's worker thread may still need it to drop the
        # barrier's tensors, and the group's destructor below joins that thread.
        time.sleep(0.05)
        dist.destroy_process_group()

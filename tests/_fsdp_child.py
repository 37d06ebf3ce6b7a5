"""Tiny FSDP2 runs in their own processes, for tests/test_fsdp.py (2 gloo ranks via torchrun).

`--mode straight` makes two runs from the same initial weights:
  1. SGD with momentum for STEPS steps; rank 0 writes the full weights to OUT/sgd_full.pt.
  2. AdamW for STEPS steps, with save_sharded at steps SAVE_AT - 1 and SAVE_AT (the second
     replaces the first) into OUT/checkpoint; rank 0 writes the full weights at SAVE_AT to
     OUT/adam_at_save.pt and at the end to OUT/adam_full.pt.
`--mode resume` builds the model from another seed, load_sharded()s OUT/checkpoint and runs
AdamW to STEPS; rank 0 writes OUT/adam_resumed.pt. Each rank also writes OUT/rank<r>.json with
what it holds locally, to show the parameters really are sharded.

Every rank trains on its half of the same global batch; the test's single-process reference
(`train_reference`) trains on the whole of it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from transformer_kit.distributed import shutdown_distributed
from transformer_kit.fsdp import (
    consolidate_to_full_state_dict,
    load_sharded,
    save_sharded,
    shard_model,
)
from transformer_kit.models import GPT, GPTConfig

STEPS = 4
SAVE_AT = 2
GLOBAL_BATCH = 8
CONFIG = GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, d_model=32)


def make_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(CONFIG)


def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    # SGD is linear in the gradient, so float noise between the sharded and the single-process
    # gradient stays float noise; Adam's first steps (about lr * sign(g)) would amplify it.
    return torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)


def adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole batch of optimizer step `step` (0-based), the same in every process."""
    g = torch.Generator().manual_seed(1000 + step)
    # Ids from 4 up: 0-3 are specials and 0 is pad_id, which the loss leaves out; padding would
    # give the halves different token counts, and the mean of their means would no longer be
    # the mean over the whole batch.
    ids = torch.randint(4, CONFIG.vocab_size, (GLOBAL_BATCH, CONFIG.block_size + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]


def batches(
    start: int, rank: int, world_size: int
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(step, inputs, targets) from `start` to STEPS, each rank's rows of the global batch."""
    per_rank = GLOBAL_BATCH // world_size
    for step in range(start, STEPS):
        inputs, targets = global_batch(step)
        rows = slice(rank * per_rank, (rank + 1) * per_rank)
        yield step, inputs[rows], targets[rows]


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs, targets) -> None:
    model(inputs, targets).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def train_reference() -> dict[str, torch.Tensor]:
    """The single-process SGD run on whole global batches: what the sharded run must equal."""
    model = make_model()
    optimizer = sgd(model)
    for _, inputs, targets in batches(0, rank=0, world_size=1):
        train_step(model, optimizer, inputs, targets)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def save_full(model: torch.nn.Module, path: Path) -> None:
    state = consolidate_to_full_state_dict(model)  # collective; empty except on rank 0
    if dist.get_rank() == 0:
        torch.save(state, path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--mode", choices=["straight", "resume"], required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    checkpoint = args.out / "checkpoint"

    if args.mode == "straight":
        model = shard_model(make_model())
        local = model.tok_emb.weight.to_local()
        info = {"local_rows": local.shape[0], "placements": str(model.tok_emb.weight.placements)}
        (args.out / f"rank{rank}.json").write_text(json.dumps(info))
        optimizer = sgd(model)
        for _, inputs, targets in batches(0, rank, world_size):
            train_step(model, optimizer, inputs, targets)
        save_full(model, args.out / "sgd_full.pt")

        model = shard_model(make_model())
        optimizer = adamw(model)
        for step, inputs, targets in batches(0, rank, world_size):
            if step in (SAVE_AT - 1, SAVE_AT):
                save_sharded(checkpoint, model, optimizer, extra={"step": step, "rank": rank})
            if step == SAVE_AT:
                save_full(model, args.out / "adam_at_save.pt")
            train_step(model, optimizer, inputs, targets)
        save_full(model, args.out / "adam_full.pt")
    else:
        model = shard_model(make_model(seed=1))
        optimizer = adamw(model)
        extra = load_sharded(checkpoint, model, optimizer)
        (args.out / f"extra{rank}.json").write_text(json.dumps(extra))
        for _, inputs, targets in batches(extra["step"], rank, world_size):
            train_step(model, optimizer, inputs, targets)
        save_full(model, args.out / "adam_resumed.pt")
    del model, optimizer  # let go of the sharded parameters before their group is destroyed
    shutdown_distributed()


if __name__ == "__main__":
    main()

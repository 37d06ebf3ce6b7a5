"""A tiny training run in its own process, for the trainer's real-process tests.

Used by tests/test_trainer.py: straight runs, runs killed with SIGKILL at a chosen step, resumed
runs, and 2-process gloo runs under torch.distributed.run. It writes the final weights to
OUT/final.pt (rank 0) and the metrics to OUT/metrics.jsonl.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import torch

from transformer_kit.augment import RandomTokenMask, Stage, StagedAugmentation
from transformer_kit.checkpoint import CheckpointManager
from transformer_kit.data import TokenDataset
from transformer_kit.distributed import shutdown_distributed
from transformer_kit.early_stopping import EarlyStopping
from transformer_kit.fsdp import consolidate_to_full_state_dict
from transformer_kit.logging import JSONLLogger
from transformer_kit.models import GPT, GPTConfig
from transformer_kit.trainer import Trainer, TrainerConfig


def corpus(n: int = 4000, vocab: int = 24) -> torch.Tensor:
    # A learnable sequence: a noisy arithmetic progression over ids 4..vocab-1 (0-3 are specials).
    g = torch.Generator().manual_seed(0)
    steps = torch.randint(1, 4, (n,), generator=g)
    return 4 + torch.cumsum(steps, 0) % (vocab - 4)


class KillAt:
    """Callback: SIGKILL this process right after the given step (no cleanup, no flush)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if trainer.step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class StopAt:
    """Callback: request a clean stop after the given step (final evaluation + checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer: Trainer, metrics: dict[str, float]) -> bool:
        return trainer.step == self.step


class SkipRngRestore(Trainer):
    """The broken control: resumes everything except the data position and RNG."""

    def load_state_dict(self, state, *, restore_data=True):  # type: ignore[override]
        super().load_state_dict(state, restore_data=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--checkpoint-every", type=int, default=3)
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--broken-resume", action="store_true")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--stop-at", type=int, default=None)
    parser.add_argument("--fsdp", action="store_true")
    parser.add_argument(
        "--augment", action="store_true", help="staged token masking + early stopping state"
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = GPTConfig(
        vocab_size=24, block_size=16, n_layer=2, n_head=2, d_model=32, dropout=args.dropout
    )
    model = GPT(config)
    data = corpus()
    trainer_config = TrainerConfig(
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=3e-3,
        warmup_steps=2,
        eval_every=4 if args.augment else 1000,
        eval_batches=2,
        checkpoint_every=args.checkpoint_every,
        seed=7,
        fsdp=args.fsdp,
    )
    cls = SkipRngRestore if args.broken_resume else Trainer
    trainer = cls(
        model,
        trainer_config,
        TokenDataset(data[:3500], 16),
        TokenDataset(data[3500:], 16),
        loggers=[JSONLLogger(args.out / "metrics.jsonl")],
        checkpoints=CheckpointManager(args.out / "checkpoints"),
        augment=StagedAugmentation([Stage(0, RandomTokenMask(0.2, mask_id=3), p=0.5)], seed=11)
        if args.augment
        else None,
        early_stopping=EarlyStopping(patience=50) if args.augment else None,
        callbacks=[KillAt(args.kill_at)] * bool(args.kill_at)
        + [StopAt(args.stop_at)] * bool(args.stop_at),
    )
    if args.resume:
        assert trainer.resume(), "nothing to resume from"
    trainer.fit()
    # Under FSDP every rank takes part in gathering the full weights; rank 0 receives them.
    state = consolidate_to_full_state_dict(model) if args.fsdp else model.state_dict()
    if trainer.context.is_main:
        torch.save(state, args.out / "final.pt")
    del trainer, model, state  # nothing may hold the process group once it is destroyed
    shutdown_distributed()


if __name__ == "__main__":
    main()

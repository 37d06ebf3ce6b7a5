"""`TrainerConfig`: every setting of the training loop that is not an object passed in.

>>> config = TrainerConfig(max_steps=100, batch_size=8)
>>> config.tokens_per_step(block_size=64)
512
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from transformer_kit.optim import OptimizerName

__all__ = ["RESUME_FIXED", "CheckpointErrorPolicy", "Precision", "TrainerConfig"]

Precision = Literal["fp32", "bf16", "fp16"]
CheckpointErrorPolicy = Literal["raise", "continue"]

RESUME_FIXED = (
    "batch_size",
    "grad_accum_steps",
    "lr",
    "optimizer",
    "weight_decay",
    "betas",
    "grad_clip",
    "eval_batches",
    "seed",
)
"""The settings a resumed run shares with its checkpoint (`Trainer.resume` checks them).

They fix what a step is: its batch, its update, its evaluation. `lr`, `betas`, `weight_decay`
(in the optimizer's saved state) and `seed` (in the data position's) are restored by a resume,
so a new value there would be silently ignored. The schedule's length and shape (`max_steps`,
`warmup_steps`, `min_lr_ratio`) may change: it is computed from them at every step, so a run
can be extended, its decay stretched from where it stands. So may everything about where and
how the run goes (device, precision, compile, logging, checkpointing, time limit, spike
rollback), and `ema_decay` (a run may start keeping an average when resumed).
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainerConfig:
    """Everything the loop needs that is not an object passed in."""

    max_steps: int = 1000
    """Optimizer steps to run (a step may hold several micro-batches)."""
    batch_size: int = 32
    """Sequences per micro-batch on each process."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step; the update equals one batch this many times larger."""
    lr: float = 3e-4
    """Peak learning rate, reached at the end of warmup."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of `lr` at the end of the cosine decay."""
    warmup_steps: int = 100
    optimizer: OptimizerName = "adamw"
    """"adamw", "muon" (Muon on hidden matrices + AdamW) or "adafactor" (least memory). Muon and
    Adafactor want larger `lr` than AdamW (see optim.md)."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay, applied to matrices only (not norms, biases, embeddings)."""
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value; None disables clipping (the norm is still
    logged)."""
    eval_every: int = 200
    eval_batches: int = 20
    """Batches per evaluation on each split (bounds evaluation time on large corpora)."""
    checkpoint_every: int | None = None
    """Save `last` every this many steps; None saves at each evaluation."""
    log_every: int = 1
    seed: int = 0
    """Seeds the data order; model initialisation is seeded by the caller."""
    device: str = "cpu"
    """"cpu", "cuda", "cuda:1", or "auto" (CUDA when available)."""
    precision: Precision = "fp32"
    """"bf16" uses autocast on CPU and CUDA; "fp16" uses autocast + GradScaler (CUDA only)."""
    compile: bool = False
    """Wrap the model in torch.compile for training and evaluation."""
    fsdp: bool = False
    """Shard parameters, gradients and optimizer state over the torchrun processes (FSDP2)
    instead of replicating them (DDP). Checkpoints then go through torch.distributed.checkpoint
    into `<checkpoints>/sharded-last/`; needs world size >= 2."""
    time_limit_s: float | None = None
    """Stop (with a final evaluation and checkpoint) once this much wall time has passed."""
    max_bad_steps: int = 5
    """Consecutive non-finite steps tolerated (each is skipped) before the run stops."""
    spike_factor: float | None = None
    """Roll back to the last good checkpoint when loss > spike_factor x its running mean."""
    max_rollbacks: int = 3
    checkpoint_error: CheckpointErrorPolicy = "raise"
    """What a failed checkpoint write does: "raise" stops the run, "continue" logs and goes on.
    Either way the previous checkpoint stays intact."""
    restore_best: bool = False
    """Load the best checkpoint's weights into the model when fit() ends (the averaged ones
    when `ema_decay` is set)."""
    ema_decay: float | None = None
    """Keep an exponential moving average of the weights with this decay (e.g. 0.995, about
    the last 200 steps; see averaging.md). Evaluations, early stopping and `best` then judge
    the averaged weights, and checkpoints hold both; None keeps no average."""

    def __post_init__(self) -> None:
        positive = ("max_steps", "batch_size", "grad_accum_steps", "eval_every", "eval_batches")
        for name in (*positive, "log_every", "max_bad_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainerConfig.{name} must be an integer >= 1, got {value!r}")
        for name in ("warmup_steps", "max_rollbacks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"TrainerConfig.{name} must be an integer >= 0, got {value!r}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(
                f"TrainerConfig.checkpoint_every must be >= 1 or None, got {self.checkpoint_every}"
            )
        if not self.lr > 0:
            raise ValueError(f"TrainerConfig.lr must be > 0, got {self.lr!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(
                f"TrainerConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}"
            )
        if self.weight_decay < 0:
            raise ValueError(f"TrainerConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"TrainerConfig.betas must be two values in [0, 1), got {self.betas}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"TrainerConfig.grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.precision not in get_args(Precision):
            raise ValueError(
                f"TrainerConfig.precision must be one of {get_args(Precision)}, "
                f"got {self.precision!r}"
            )
        if self.optimizer not in get_args(OptimizerName):
            raise ValueError(
                f"TrainerConfig.optimizer must be one of {get_args(OptimizerName)}, "
                f"got {self.optimizer!r}"
            )
        if self.checkpoint_error not in get_args(CheckpointErrorPolicy):
            raise ValueError(
                f"TrainerConfig.checkpoint_error must be one of "
                f"{get_args(CheckpointErrorPolicy)}, got {self.checkpoint_error!r}"
            )
        if self.spike_factor is not None and not self.spike_factor > 1:
            raise ValueError(
                f"TrainerConfig.spike_factor must be > 1 or None, got {self.spike_factor}"
            )
        if self.fsdp:
            for name, value, allowed in (
                ("precision", self.precision, ("fp32", "bf16")),
                ("spike_factor", self.spike_factor, (None,)),
                ("restore_best", self.restore_best, (False,)),
            ):
                if value not in allowed:
                    raise ValueError(
                        f"TrainerConfig.{name}={value!r} is not supported with fsdp=True "
                        f"(allowed: {allowed}); sharded runs keep only the `last` checkpoint"
                    )
        if self.fsdp and self.ema_decay is not None:
            raise ValueError(
                f"TrainerConfig.ema_decay={self.ema_decay!r} is not supported with fsdp=True "
                "(allowed: None): a sharded weight average is not implemented"
            )
        if self.ema_decay is not None and not (
            isinstance(self.ema_decay, float | int)
            and not isinstance(self.ema_decay, bool)
            and 0 < self.ema_decay < 1
        ):
            raise ValueError(
                "TrainerConfig.ema_decay must be a number in (0, 1) or None, "
                f"got {self.ema_decay!r}"
            )
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise ValueError(
                f"TrainerConfig.time_limit_s must be > 0 or None, got {self.time_limit_s}"
            )

    def tokens_per_step(self, *, block_size: int, world_size: int = 1) -> int:
        """Tokens consumed by one optimizer step across all processes."""
        return self.batch_size * self.grad_accum_steps * world_size * block_size

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def resume_changes(self, saved: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """The `RESUME_FIXED` settings on which this config differs from `saved`.

        Args:
            saved: a checkpoint's ``"trainer_config"`` (`to_dict`, tuples stored as lists
                compare equal to tuples). Settings it lacks are not compared.

        Returns:
            ``{name: (saved value, this config's value)}``, empty when they agree.

        Example:
            >>> old = TrainerConfig(lr=1e-3).to_dict()
            >>> TrainerConfig(lr=3e-4, max_steps=5000).resume_changes(old)
            {'lr': (0.001, 0.0003)}
        """

        def plain(value: Any) -> Any:  # a checkpoint holds tuples as lists
            return list(value) if isinstance(value, tuple) else value

        own = self.to_dict()
        return {
            name: (saved[name], own[name])
            for name in RESUME_FIXED
            if name in saved and plain(saved[name]) != plain(own[name])
        }

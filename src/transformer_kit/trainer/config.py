"""`TrainerConfig`: every setting of the training loop that is not an object passed in.

>>> config = TrainerConfig(max_steps=100, batch_size=8)
>>> config.tokens_per_step(block_size=64)
512
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

import torch

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
    """Seeds the data order; model initialisation is seeded by the caller. In [-2**63, 2**64),
    the range torch.manual_seed accepts."""
    device: str = "cpu"
    """"cpu", "cuda", "cuda:N" (e.g. "cuda:1"), "mps", or "auto" (CUDA when available, else
    CPU); a `torch.device` is stored as its name. `Trainer` refuses a device this machine does
    not have, before it writes anything."""
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
        # Every field is checked for its type as well as its range (a bool is not a number),
        # then stored as a plain int / float / tuple: a checkpoint holds `to_dict()`, and
        # `torch.load(weights_only=True)` refuses numpy scalars.
        for name, low in _INTEGER_FIELDS.items():
            self._set(name, _integer(name, getattr(self, name), low))
        if self.checkpoint_every is not None:
            self._set("checkpoint_every", _integer("checkpoint_every", self.checkpoint_every, 1))
        if not (_is_integer(self.seed) and _SEED_LOW <= self.seed < _SEED_HIGH):
            raise ValueError(
                "TrainerConfig.seed must be an integer in [-2**63, 2**64) (the range "
                f"torch.manual_seed accepts), got {_shown(self.seed, _is_integer)}"
            )
        self._set("seed", int(self.seed))
        for name, rule, passes in _NUMBER_FIELDS:
            value = getattr(self, name)
            if value is None and name in _OPTIONAL_NUMBERS:
                continue
            number = _finite(value)
            if number is None or not passes(number):
                raise ValueError(
                    f"TrainerConfig.{name} must be {rule}, got {_shown(value, _is_number)}"
                )
            self._set(name, number)
        betas = self.betas
        pair = isinstance(betas, tuple | list) and len(betas) == 2
        values = [v for v in map(_finite, betas) if v is not None and 0 <= v < 1] if pair else []
        if len(values) != 2:
            raise ValueError(
                "TrainerConfig.betas must be two numbers in [0, 1) (a tuple or list), "
                f"got {_shown(betas, lambda v: isinstance(v, tuple | list))}"
            )
        self._set("betas", (values[0], values[1]))
        for name in ("compile", "fsdp", "restore_best"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(
                    f"TrainerConfig.{name} must be True or False, "
                    f"got {_shown(value, lambda v: isinstance(v, bool))}"
                )
        if isinstance(self.device, torch.device):  # stored as its name: the config stays plain
            self._set("device", str(self.device))
        if not (isinstance(self.device, str) and _DEVICE.fullmatch(self.device)):
            raise ValueError(
                "TrainerConfig.device must be 'auto' (CUDA when available, else CPU), 'cpu', "
                "'cuda', 'cuda:N' (N = 0, 1, ...) or 'mps', "
                f"got {_shown(self.device, lambda v: isinstance(v, str))}"
            )
        self._set("device", str.__str__(self.device))  # a str subclass (an enum) as plain str
        for name, choices in (
            ("precision", get_args(Precision)),
            ("optimizer", get_args(OptimizerName)),
            ("checkpoint_error", get_args(CheckpointErrorPolicy)),
        ):
            value = getattr(self, name)
            if not (isinstance(value, str) and value in choices):
                raise ValueError(f"TrainerConfig.{name} must be one of {choices}, got {value!r}")
            self._set(name, choices[choices.index(value)])
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

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)  # frozen: only __post_init__ normalises

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


_INTEGER_FIELDS = {
    "max_steps": 1,
    "batch_size": 1,
    "grad_accum_steps": 1,
    "eval_every": 1,
    "eval_batches": 1,
    "log_every": 1,
    "max_bad_steps": 1,
    "warmup_steps": 0,
    "max_rollbacks": 0,
}
"""The integer fields (besides `checkpoint_every` and `seed`) and their least value."""

_NUMBER_FIELDS: tuple[tuple[str, str, Callable[[float], bool]], ...] = (
    ("lr", "a finite number > 0", lambda x: x > 0),
    ("min_lr_ratio", "a number in [0, 1]", lambda x: 0 <= x <= 1),
    ("weight_decay", "a finite number >= 0", lambda x: x >= 0),
    ("grad_clip", "a finite number > 0, or None (no clipping)", lambda x: x > 0),
    ("spike_factor", "a finite number > 1, or None (no rollback)", lambda x: x > 1),
    ("ema_decay", "a number in (0, 1) or None", lambda x: 0 < x < 1),
    ("time_limit_s", "a finite number of seconds > 0, or None (no limit)", lambda x: x > 0),
)
"""The real-valued fields: (name, what is allowed, the test a finite value must pass)."""

_OPTIONAL_NUMBERS = frozenset({"grad_clip", "spike_factor", "ema_decay", "time_limit_s"})

_SEED_LOW, _SEED_HIGH = -(2**63), 2**64  # torch.manual_seed's range (negatives wrap around)

_DEVICE = re.compile(r"auto|cpu|mps|cuda|cuda:(?:0|[1-9][0-9]*)")
"""What `Trainer` resolves: "auto", or a torch device string of these forms."""


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _finite(value: object) -> float | None:
    """`value` as a plain float when it is a finite real number (not a bool), else None."""
    if not _is_number(value):
        return None
    try:
        number = float(cast(numbers.Real, value))
    except OverflowError:  # an int or fraction too large for a float
        return None
    return number if math.isfinite(number) else None


def _shown(value: object, right_type: Callable[[object], bool]) -> str:
    """`value` for an error message, with its type when that is what is wrong."""
    if right_type(value):
        return repr(value)
    kind = type(value)
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
    return f"{value!r} of type {name}"


def _integer(name: str, value: object, low: int) -> int:
    if not (_is_integer(value) and cast(int, value) >= low):
        optional = " or None" if name == "checkpoint_every" else ""
        raise ValueError(
            f"TrainerConfig.{name} must be an integer >= {low}{optional}, "
            f"got {_shown(value, _is_integer)}"
        )
    return int(cast(int, value))

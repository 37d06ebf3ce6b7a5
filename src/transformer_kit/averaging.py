"""Weight averaging: an exponential moving average (EMA) of a model's parameters.

The weights at the end of training are wherever the last noisy steps left them; their running
average over the last few hundred steps usually sits lower on the validation loss (Polyak and
Juditsky 1992). `EMA` keeps that average in a copy of the model, and the Trainer evaluates and
checkpoints it when `TrainerConfig(ema_decay=...)` is set.

    >>> model = torch.nn.Linear(1, 1, bias=False)
    >>> _ = torch.nn.init.zeros_(model.weight); ema = EMA(model, decay=0.5, warmup=False)
    >>> _ = torch.nn.init.ones_(model.weight); ema.update(model)  # after an optimizer step
    >>> ema.module.weight.item()  # 0.5 * 0 + 0.5 * 1; `with ema.applied(model):` swaps it in
    0.5
"""

from __future__ import annotations

import contextlib
import copy
import numbers
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["EMA", "inference_weights"]

_LOW_PRECISION = (torch.bfloat16, torch.float16)


class EMA:
    """An exponential moving average of `model`'s parameters, kept in a copy of the model.

    Update `t` (the copy made here is update 1) sets every averaged parameter to
    ``a_t = d_t * a_{t-1} + (1 - d_t) * p_t``, with ``a_1`` the model's weights now. With
    `warmup` the decay grows with the updates, ``d_t = min(decay, t / (t + 9))`` (TensorFlow's
    `ExponentialMovingAverage(num_updates=...)` rule, whose step count is ``t - 1``), so the
    average does not hold on to the random initial weights; without it ``d_t = decay``. The
    average reaches back about ``1 / (1 - decay)`` updates: 200 at 0.995, 1000 at 0.999.

    The copy holds no gradients. Buffers (RoPE tables, masks) are not averaged; the copy keeps
    the ones the model had when it was made. Parameters in bfloat16 or float16 are averaged in
    float32 (a step of ``(1 - d) * (p - a)`` would round away in 8 mantissa bits), and cast
    back when copied into a model.

    Args:
        model: the plain module being trained, not a DDP or compiled wrapper (the copy's
            state dict must load into the model). Later updates pair its parameters, in
            `parameters()` order, with the copy's.
        decay: the decay in (0, 1) once warmed up.
        warmup: grow the decay with the number of updates (see above).
    """

    decay: float
    warmup: bool
    module: nn.Module
    """The copy of the model that holds the average; usable as the model (e.g. to sample)."""
    _updates: int

    def __init__(self, model: nn.Module, *, decay: float = 0.999, warmup: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"EMA: model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(decay, bool) or not isinstance(decay, numbers.Real):
            raise TypeError(f"EMA: decay must be a real number in (0, 1), got {decay!r}")
        if not 0 < decay < 1:
            raise ValueError(f"EMA: decay must be in (0, 1), got {decay!r}")
        if not isinstance(warmup, bool):
            raise TypeError(f"EMA: warmup must be True or False, got {warmup!r}")
        self.decay = float(decay)
        self.warmup = warmup
        self.module = copy.deepcopy(model).requires_grad_(False)
        with torch.no_grad():
            for param in self.module.parameters():
                if param.dtype in _LOW_PRECISION:
                    param.data = param.data.float()
        self._updates = 1

    @property
    def updates(self) -> int:
        """How many sets of weights the average has taken in (the copy made at init counts)."""
        return self._updates

    def decay_at(self, update: int) -> float:
        """The decay `d_t` that update number `update` (from 1) applies."""
        return min(self.decay, update / (update + 9)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Take in the current weights of `model` (call after each optimizer step)."""
        averaged, current = self._pairs(model, "update")
        weight = 1.0 - self.decay_at(self._updates + 1)
        current = [p.detach().to(a.dtype) for a, p in zip(averaged, current, strict=True)]
        torch._foreach_lerp_(averaged, current, weight)  # a += weight * (p - a), all at once
        self._updates += 1

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Start the average again from `model`'s current weights (update count 1)."""
        averaged, current = self._pairs(model, "reset")
        for a, p in zip(averaged, current, strict=True):
            a.copy_(p)
        self._updates = 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite `model`'s parameters with the averaged ones (for export or sampling)."""
        averaged, current = self._pairs(model, "copy_to")
        for a, p in zip(averaged, current, strict=True):
            p.copy_(a)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Put the averaged weights into `model` for the block, then its own back, even when
        the block raises. Parameters are copied in place, so wrappers of `model` (compiled,
        DDP) and code that holds it see the averaged weights too."""
        saved = [p.detach().clone() for p in model.parameters()]
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for param, own in zip(model.parameters(), saved, strict=True):
                    param.copy_(own)

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights (a state dict of the model, loadable into it) and the count."""
        return {"weights": self.module.state_dict(), "updates": self._updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned, so that later updates go on exactly."""
        if not isinstance(state, Mapping) or not {"weights", "updates"} <= state.keys():
            raise ValueError(
                "EMA.load_state_dict: state must be a mapping with 'weights' and 'updates', "
                f"as EMA.state_dict() returns; got {type(state).__name__}"
                + (f" with keys {sorted(state)}" if isinstance(state, Mapping) else "")
            )
        self.module.load_state_dict(state["weights"])
        self._updates = int(state["updates"])

    def _pairs(self, model: nn.Module, what: str) -> tuple[list[Tensor], list[Tensor]]:
        # Checked before anything is written, so a mismatch leaves both sides as they were.
        averaged = [p.detach() for p in self.module.parameters()]
        current = [p.detach() for p in model.parameters()]
        if [a.shape for a in averaged] != [p.shape for p in current]:
            raise ValueError(
                f"EMA.{what}: the model's parameters ({len(current)} tensors) do not match the "
                f"averaged copy's ({len(averaged)} tensors, or other shapes); pass the plain "
                "module the EMA was made from"
            )
        return averaged, current

    def __repr__(self) -> str:
        return f"EMA(decay={self.decay}, warmup={self.warmup}, updates={self.updates})"


def inference_weights(checkpoint: Mapping[str, Any]) -> Mapping[str, Tensor]:
    """The weights to sample or export from a Trainer checkpoint: the EMA's when the run kept
    one (``checkpoint["ema"]``), otherwise the trained model's (``checkpoint["model"]``), as in
    ``model.load_state_dict(inference_weights(manager.load("best")))``.
    """
    ema = checkpoint.get("ema")
    if ema:
        return ema["weights"]
    if "model" not in checkpoint:
        raise KeyError("inference_weights: the checkpoint has neither 'ema' nor 'model' weights")
    return checkpoint["model"]

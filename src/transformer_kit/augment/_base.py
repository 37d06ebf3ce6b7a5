"""The `Augmentation` protocol and the argument checks every transform shares."""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

__all__ = ["Augmentation"]


class Augmentation(Protocol):
    """A transform of one batch.

    It returns new tensors of the same shape, never mutates its arguments and draws all of its
    randomness from ``generator``.
    """

    def __call__(
        self, inputs: Tensor, targets: Tensor, *, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Return the augmented ``(inputs, targets)``, each (B, T)."""
        ...


def _is_finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_probability(owner: str, p: float) -> None:
    # The chained comparison is False for NaN, so NaN is refused too.
    if isinstance(p, bool) or not isinstance(p, int | float) or not (0.0 <= p <= 1.0):
        raise ValueError(f"{owner}: p must be a number in [0, 1], got {p!r}")


def _check_id(owner: str, name: str, token: int) -> None:
    if isinstance(token, bool) or not isinstance(token, int) or token < 0:
        raise ValueError(f"{owner}: {name} must be an int >= 0, got {token!r}")


def _check_batch(owner: str, inputs: Tensor, targets: Tensor) -> None:
    for name, tensor in (("inputs", inputs), ("targets", targets)):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{owner}: {name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 2 or tensor.is_floating_point() or tensor.is_complex():
            raise ValueError(
                f"{owner}: {name} must be a 2-D integer tensor (B, T), got shape "
                f"{tuple(tensor.shape)} and dtype {tensor.dtype}"
            )
        if tensor.dtype == torch.bool:
            raise ValueError(f"{owner}: {name} must be an integer tensor, got dtype torch.bool")
    if inputs.shape != targets.shape:
        raise ValueError(
            f"{owner}: inputs and targets must have the same shape, got {tuple(inputs.shape)} "
            f"and {tuple(targets.shape)}"
        )

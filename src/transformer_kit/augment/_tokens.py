"""Transforms of any token batch: random masking and random crops."""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import KW_ONLY, dataclass

import torch
from torch import Tensor

from transformer_kit.augment._base import _check_batch, _check_id, _check_probability

__all__ = ["RandomCrop", "RandomTokenMask"]


@dataclass(frozen=True, slots=True)
class RandomTokenMask:
    """Replace each input token with ``mask_id`` with probability ``p``.

    Targets are never changed, so the model learns to predict the true next token from a
    corrupted context. Tokens whose id is in ``protected_ids`` (padding, separators) are never
    masked.

    Example:
        >>> mask = RandomTokenMask(1.0, mask_id=9, protected_ids=(0,))
        >>> mask(torch.tensor([[0, 5, 6]]), torch.tensor([[5, 6, 7]]), generator=torch.Generator())
        (tensor([[0, 9, 9]]), tensor([[5, 6, 7]]))
    """

    p: float
    _: KW_ONLY
    mask_id: int
    protected_ids: Sequence[int] = ()

    def __post_init__(self) -> None:
        _check_probability("RandomTokenMask", self.p)
        _check_id("RandomTokenMask", "mask_id", self.mask_id)
        if not isinstance(self.protected_ids, Sequence | Set):
            raise TypeError(
                f"RandomTokenMask: protected_ids must be a sequence of token ids, "
                f"got {self.protected_ids!r}"
            )
        for token in self.protected_ids:
            _check_id("RandomTokenMask", "protected_ids entries", token)
        object.__setattr__(self, "protected_ids", tuple(self.protected_ids))

    def __call__(
        self, inputs: Tensor, targets: Tensor, *, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Return the masked inputs and a copy of the targets."""
        _check_batch("RandomTokenMask", inputs, targets)
        draws = torch.rand(inputs.shape, generator=generator, device=generator.device)
        masked = draws.to(inputs.device) < self.p  # (B, T)
        if self.protected_ids:
            protected = torch.tensor(self.protected_ids, dtype=inputs.dtype, device=inputs.device)
            masked &= ~torch.isin(inputs, protected)
        return inputs.masked_fill(masked, self.mask_id), targets.clone()


@dataclass(frozen=True, slots=True)
class RandomCrop:
    """Keep a random-length prefix of each row and pad the rest of inputs and targets.

    Each row keeps its first L tokens, with L drawn uniformly from [min_length, T] independently
    per row; positions from L on become ``pad_id`` in the inputs and ``target_pad_id`` in the
    targets. The loss must ignore ``target_pad_id`` (e.g. ``cross_entropy(...,
    ignore_index=target_pad_id)``), or the model is trained to predict padding.

    Args:
        min_length: Shortest kept prefix, >= 1.
        pad_id: Id written into the cropped input positions.
        target_pad_id: Id written into the cropped target positions; defaults to ``pad_id``.
            Use -100 for PyTorch's default ``ignore_index``.

    Example:
        >>> crop = RandomCrop(2, pad_id=0, target_pad_id=-100)
        >>> ids = torch.tensor([[5, 6, 7, 8]])
        >>> inputs, targets = crop(ids, ids + 1, generator=torch.Generator().manual_seed(2))
        >>> inputs.tolist(), targets.tolist()
        ([[5, 6, 0, 0]], [[6, 7, -100, -100]])
    """

    min_length: int
    _: KW_ONLY
    pad_id: int = 0
    target_pad_id: int | None = None

    def __post_init__(self) -> None:
        if (
            isinstance(self.min_length, bool)
            or not isinstance(self.min_length, int)
            or self.min_length < 1
        ):
            raise ValueError(f"RandomCrop: min_length must be an int >= 1, got {self.min_length!r}")
        _check_id("RandomCrop", "pad_id", self.pad_id)
        if self.target_pad_id is not None and (
            isinstance(self.target_pad_id, bool) or not isinstance(self.target_pad_id, int)
        ):
            raise ValueError(
                f"RandomCrop: target_pad_id must be an int or None, got {self.target_pad_id!r}"
            )

    def __call__(
        self, inputs: Tensor, targets: Tensor, *, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Return the cropped-and-padded inputs and targets."""
        _check_batch("RandomCrop", inputs, targets)
        rows, length = inputs.shape
        if length < self.min_length:
            raise ValueError(
                f"RandomCrop: sequence length T={length} is shorter than "
                f"min_length={self.min_length}"
            )
        kept = torch.randint(
            self.min_length, length + 1, (rows,), generator=generator, device=generator.device
        ).to(inputs.device)  # (B,)
        cropped = torch.arange(length, device=inputs.device) >= kept[:, None]  # (B, T)
        target_pad = self.pad_id if self.target_pad_id is None else self.target_pad_id
        return inputs.masked_fill(cropped, self.pad_id), targets.masked_fill(cropped, target_pad)

"""Autoregressive decoding for any ids -> logits model: filters, penalties, sampling, beams.

Filters and penalties are pure functions on logits `(..., V)` (removed entries become `-inf`,
inputs are never mutated); `generate` composes them in one documented order and samples, and
`beam_search` finds high-scoring continuations deterministically.
    >>> import torch
    >>> filter_top_k(torch.tensor([1.0, 3.0, 2.0]), 2)
    tensor([-inf, 3., 2.])
"""

from __future__ import annotations

from transformer_kit.sampling._beam import beam_search
from transformer_kit.sampling._filters import (
    LogitsFilter,
    apply_temperature,
    filter_min_p,
    filter_top_k,
    filter_top_p,
    mask_allowed,
)
from transformer_kit.sampling._generate import AllowedNext, Slide, generate
from transformer_kit.sampling._penalties import (
    apply_frequency_penalty,
    apply_presence_penalty,
    apply_repetition_penalty,
)

__all__ = [
    "AllowedNext",
    "LogitsFilter",
    "Slide",
    "apply_frequency_penalty",
    "apply_presence_penalty",
    "apply_repetition_penalty",
    "apply_temperature",
    "beam_search",
    "filter_min_p",
    "filter_top_k",
    "filter_top_p",
    "generate",
    "mask_allowed",
]

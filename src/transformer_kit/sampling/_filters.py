"""Logit filters: pure functions `(logits (..., V), param) -> new logits`.

Removed entries become `-inf`, kept entries are unchanged, at least the argmax survives (for
`mask_allowed`: at least one allowed id), and the input is never mutated.

    >>> filter_min_p(torch.tensor([0.0, 2.0, 1.9]), 0.5)
    tensor([  -inf, 2.0000, 1.9000])
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Collection

import torch
from torch import Tensor

__all__ = [
    "LogitsFilter",
    "apply_temperature",
    "filter_min_p",
    "filter_top_k",
    "filter_top_p",
    "mask_allowed",
]

LogitsFilter = Callable[[Tensor], Tensor]
"""A pure function from logits `(..., V)` to filtered logits of the same shape."""


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """Divide `logits` by `temperature`: below 1 sharpens the distribution, above 1 flattens it.

    Raises:
        ValueError: If `temperature` is not a finite number > 0 (`generate` treats 0 as greedy).
    """
    if not 0.0 < temperature < math.inf:
        raise ValueError(
            f"apply_temperature: temperature must be a finite number > 0, got {temperature!r}"
        )
    return logits / temperature


def filter_top_k(logits: Tensor, k: int) -> Tensor:
    """Keep the entries at least as large as the k-th largest along the last dimension.

    This is a threshold, so every entry tied with the k-th largest value is kept and more than
    `k` entries may survive; with distinct values exactly `min(k, V)` survive. `k >= V` keeps
    everything.

    Args:
        logits: Scores of shape `(..., V)`.
        k: Number of top entries to keep, >= 1.

    Returns:
        A new tensor with the removed entries set to `-inf`.

    Raises:
        ValueError: If `k < 1`.

    Example:
        >>> filter_top_k(torch.tensor([1.0, 2.0, 2.0, 0.0]), 2)
        tensor([-inf, 2., 2., -inf])
    """
    if k < 1:
        raise ValueError(f"filter_top_k: k must be an int >= 1, got {k!r}")
    if k >= logits.size(-1):
        return logits.clone()
    threshold = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < threshold, -math.inf)


def filter_top_p(logits: Tensor, p: float) -> Tensor:
    """Keep the smallest set of most probable entries whose probability mass reaches `p`.

    Entries are ranked by logit, descending (the same order as probability); an entry is kept
    when the probability mass of the entries ranked before it is still below `p`, so the kept
    mass is >= `p` and the argmax is always kept (nucleus sampling, Holtzman et al., 2020). Ties
    are ranked by a stable sort, so among equal logits the lower index comes first, and the cut
    may keep one of them and drop another. The mass is computed in at least float32. `p=1`
    keeps every entry.

    Args:
        logits: Scores of shape `(..., V)`.
        p: Probability mass to keep, in (0, 1].

    Returns:
        A new tensor with the removed entries set to `-inf`.

    Raises:
        ValueError: If `p` is outside (0, 1].

    Example:
        >>> filter_top_p(torch.tensor([0.0, 2.0, 1.0]), 0.6)
        tensor([-inf, 2., -inf])
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"filter_top_p: p must be in (0, 1], got {p!r}")
    if p == 1.0:
        # Rounding in the cumulative sum could otherwise drop entries of tiny probability.
        return logits.clone()
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    sorted_probs = torch.softmax(sorted_logits.to(dtype), dim=-1)
    cumulative = sorted_probs.cumsum(dim=-1)
    # Mass of the entries ranked strictly before each one.
    mass_before = torch.cat([torch.zeros_like(cumulative[..., :1]), cumulative[..., :-1]], dim=-1)
    # The top entry is kept explicitly: a p below float32's smallest subnormal rounds to 0.
    is_top = torch.arange(logits.size(-1), device=logits.device) == 0
    keep_sorted = (mass_before < p) | is_top
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, keep_sorted)
    return logits.masked_fill(~keep, -math.inf)


def filter_min_p(logits: Tensor, p: float) -> Tensor:
    """Keep the entries whose probability is at least `p` times the largest probability.

    Min-p sampling (Nguyen et al., 2024, "Turning Up the Heat: Min-p Sampling for Creative and
    Coherent LLM Outputs"): the cut scales with the model's confidence. Since
    `prob_i / prob_max = exp(logit_i - logit_max)`, the test is done on logits, in at least
    float32, as `logit_i - logit_max >= log(p)`, which needs no softmax and cannot underflow.
    Every entry tied with the maximum is kept, so the argmax always survives. `p=0` keeps
    everything; `p=1` keeps only the entries equal to the maximum.

    Args:
        logits: Scores of shape `(..., V)`.
        p: Fraction of the top probability an entry needs, in [0, 1].

    Returns:
        A new tensor with the removed entries set to `-inf`.

    Raises:
        ValueError: If `p` is outside [0, 1].

    Example:
        >>> filter_min_p(torch.tensor([0.0, 3.0, 2.0]), 0.3)
        tensor([-inf, 3., 2.])
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"filter_min_p: p must be in [0, 1], got {p!r}")
    if p == 0.0:
        return logits.clone()
    scores = logits.to(torch.promote_types(logits.dtype, torch.float32))
    gap = scores - scores.amax(dim=-1, keepdim=True)  # (..., V), <= 0
    return logits.masked_fill(~(gap >= math.log(p)), -math.inf)


def mask_allowed(logits: Tensor, allowed: Collection[int]) -> Tensor:
    """Keep only the entries whose ids are in `allowed`, the same set for every row.

    This is the mask `generate(..., allowed_next=fn)` applies before anything else; a grammar
    or a format checker decides `allowed`. Repeated ids are harmless.

    Args:
        logits: Scores of shape `(..., V)`.
        allowed: Token ids in `[0, V)`, at least one.

    Returns:
        A new tensor with every entry outside `allowed` set to `-inf`.

    Raises:
        ValueError: If `allowed` is empty or holds an id outside `[0, V)`.
        TypeError: If an entry of `allowed` is not an integer.

    Example:
        >>> mask_allowed(torch.tensor([1.0, 2.0, 3.0]), [0, 2])
        tensor([1., -inf, 3.])
    """
    keep = _allowed_mask(allowed, logits.size(-1), logits.device, "mask_allowed: allowed")
    return logits.masked_fill(~keep, -math.inf)


def _allowed_mask(
    allowed: Collection[int], vocab_size: int, device: torch.device, subject: str
) -> Tensor:
    """A `(V,)` bool mask, True at the ids in `allowed`; `subject` starts the error messages."""
    index = [operator.index(i) for i in allowed]
    if not index:
        raise ValueError(f"{subject} must name at least one token id, got {allowed!r}")
    if not all(0 <= i < vocab_size for i in index):
        raise ValueError(f"{subject} must name token ids in [0, {vocab_size}), got {allowed!r}")
    # Marked in a bytearray and wrapped without a copy: indexing a tensor with a Python list
    # cost 8x as much per call (44 against 5 us at 32 of 93 ids), and a constraint calls this
    # for every row at every step.
    marks = bytearray(vocab_size)
    for i in index:
        marks[i] = 1
    return torch.frombuffer(marks, dtype=torch.bool).to(device)

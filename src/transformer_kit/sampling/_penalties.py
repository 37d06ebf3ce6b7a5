"""Penalties on tokens already seen: `(logits (..., V), ids (..., T), penalty) -> new logits`.

Each row of `logits` is paired with the row of `ids` of the same leading index (in `generate`,
the prompt and the tokens generated so far). Tokens absent from a row's ids are unchanged; the
work is one scatter over the whole batch, and the inputs are never mutated.

    >>> apply_presence_penalty(torch.zeros(1, 4), torch.tensor([[2, 2]]), 1.5)
    tensor([[ 0.0000,  0.0000, -1.5000,  0.0000]])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["apply_frequency_penalty", "apply_presence_penalty", "apply_repetition_penalty"]


def apply_repetition_penalty(logits: Tensor, ids: Tensor, penalty: float) -> Tensor:
    """Make the tokens present in each row's `ids` less likely, CTRL style.

    For a present token, a positive logit is divided by `penalty` and a negative one is
    multiplied by it (Keskar et al., 2019, "CTRL", section 4.1; the sign split is the one common
    implementations use so that a negative logit is pushed down too). `penalty=1` is the
    identity, `penalty > 1` discourages repetition and `penalty < 1` encourages it. Each present
    token is penalised once, however often it occurs.

    Args:
        logits: Scores of shape `(..., V)`.
        ids: Token ids in `[0, V)`, integer tensor of shape `(..., T)` with the leading shape of
            `logits`; `T` may be 0.
        penalty: A finite number > 0.

    Returns:
        A new tensor of the shape of `logits`.

    Raises:
        ValueError: If `penalty` is not a finite number > 0, or `ids` does not fit `logits`.

    Example:
        >>> apply_repetition_penalty(torch.tensor([[2.0, -2.0, 2.0]]), torch.tensor([[0, 1]]), 2.0)
        tensor([[ 1., -4.,  2.]])
    """
    if not 0.0 < penalty < math.inf:
        raise ValueError(
            f"apply_repetition_penalty: penalty must be a finite number > 0, got {penalty!r}"
        )
    present = _counts(logits, ids, "apply_repetition_penalty") > 0
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(present, penalised, logits)


def apply_presence_penalty(logits: Tensor, ids: Tensor, penalty: float) -> Tensor:
    """Subtract `penalty` once from the logit of every token present in the row's `ids`.

    The additive penalty of the OpenAI API: `penalty=0` is the identity and a negative penalty
    rewards repetition.

    Args:
        logits: Scores of shape `(..., V)`.
        ids: Token ids in `[0, V)`, integer tensor of shape `(..., T)` with the leading shape of
            `logits`; `T` may be 0.
        penalty: A finite number.

    Returns:
        A new tensor of the shape of `logits`.

    Raises:
        ValueError: If `penalty` is not finite, or `ids` does not fit `logits`.
    """
    if not math.isfinite(penalty):
        raise ValueError(
            f"apply_presence_penalty: penalty must be a finite number, got {penalty!r}"
        )
    present = _counts(logits, ids, "apply_presence_penalty") > 0
    return torch.where(present, logits - penalty, logits)


def apply_frequency_penalty(logits: Tensor, ids: Tensor, penalty: float) -> Tensor:
    """Subtract `penalty` times the number of occurrences in the row's `ids` from each logit.

    The frequency penalty of the OpenAI API: a token seen three times loses `3 * penalty`.
    `penalty=0` is the identity and a negative penalty rewards repetition.

    Args:
        logits: Scores of shape `(..., V)`.
        ids: Token ids in `[0, V)`, integer tensor of shape `(..., T)` with the leading shape of
            `logits`; `T` may be 0.
        penalty: A finite number.

    Returns:
        A new tensor of the shape of `logits`.

    Raises:
        ValueError: If `penalty` is not finite, or `ids` does not fit `logits`.

    Example:
        >>> apply_frequency_penalty(torch.zeros(4), torch.tensor([1, 3, 3]), 0.5)
        tensor([ 0.0000, -0.5000,  0.0000, -1.0000])
    """
    if not math.isfinite(penalty):
        raise ValueError(
            f"apply_frequency_penalty: penalty must be a finite number, got {penalty!r}"
        )
    counts = _counts(logits, ids, "apply_frequency_penalty")
    return torch.where(counts > 0, logits - penalty * counts.to(logits.dtype), logits)


def _counts(logits: Tensor, ids: Tensor, where: str) -> Tensor:
    """Occurrences of each token id in each row of `ids`, shape `(..., V)`, after checking."""
    vocab_size = logits.size(-1)
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(f"{where}: ids must be an integer tensor, got dtype {ids.dtype}")
    if ids.dim() != logits.dim() or ids.shape[:-1] != logits.shape[:-1]:
        raise ValueError(
            f"{where}: ids must have shape (..., T) with the leading shape of logits"
            f" {tuple(logits.shape)}, got {tuple(ids.shape)}"
        )
    if ids.numel() and (bool((ids < 0).any()) or bool((ids >= vocab_size).any())):
        raise ValueError(
            f"{where}: ids must be token ids in [0, {vocab_size}), got ids from"
            f" {int(ids.min())} to {int(ids.max())}"
        )
    index = ids.to(device=logits.device, dtype=torch.long)  # (..., T)
    counts = torch.zeros(logits.shape, dtype=torch.long, device=logits.device)
    return counts.scatter_add(-1, index, torch.ones_like(index))  # (..., V)

"""Autoregressive sampling: logit filters and a batched `generate` for any ids -> logits model.

A filter maps logits `(..., V)` to new logits with removed entries set to `-inf`; it keeps at
least the argmax and never mutates its input. `generate` composes them, in a documented order.

    >>> logits = torch.tensor([1.0, 3.0, 2.0])
    >>> filter_top_k(logits, 2)
    tensor([-inf, 3., 2.])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "LogitsFilter",
    "apply_temperature",
    "filter_top_k",
    "filter_top_p",
    "generate",
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


def _last_logits(output: object) -> Tensor:
    logits = getattr(output, "logits", output)
    if not isinstance(logits, Tensor) or logits.dim() != 3:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            "generate: model(ids) must return logits of shape (B, T, V) or an object with such"
            f" a .logits, got {shape}"
        )
    return logits[:, -1, :]  # (B, V)


def generate(
    model: nn.Module,
    ids: Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_ids: Sequence[int] = (),
    generator: torch.Generator | None = None,
    filters: Sequence[LogitsFilter] = (),
    block_size: int | None = None,
    pad_id: int = 0,
) -> Tensor:
    """Extend each sequence in `ids` by up to `max_new_tokens` sampled tokens.

    At each step the model sees the last `block_size` tokens and only its logits at the last
    position are used. They go through, in order: temperature, top-k, top-p, then each of
    `filters`, and a token is drawn with `torch.multinomial(probs, 1, generator=generator)`.
    `temperature=0` means greedy decoding (argmax, lowest id on ties); the filters are then
    skipped. A sequence that emits a token in `stop_ids` is finished: the stop token is kept and
    later positions hold `pad_id`. Generation ends early once every sequence has finished, so the
    result may be shorter than `T + max_new_tokens`.

    The model runs under `torch.no_grad()` in eval mode; every submodule's training flag is
    restored afterwards, even on error. `ids` is never mutated.

    Args:
        model: Maps ids `(B, T)` to logits `(B, T, V)`, or to an object with such a `.logits`.
        ids: Prompt token ids, an integer tensor of shape `(B, T)` with `T >= 1`.
        max_new_tokens: Maximum number of tokens to append, >= 0.
        temperature: Softmax temperature, >= 0; 0 is greedy.
        top_k: Keep only the `top_k` largest logits (ties at the cut kept); None disables.
        top_p: Keep the smallest most-probable set with mass >= `top_p`; None disables.
        stop_ids: Token ids that finish a sequence.
        generator: Source of randomness; the same seed gives the same output. None uses torch's
            global RNG.
        filters: Extra `LogitsFilter`s applied after top-p, in order.
        block_size: Context length fed to the model; defaults to `model.config.block_size` when
            the model has one, else the whole sequence.
        pad_id: Fill for finished sequences. Finished rows are still fed to the model until all
            rows finish, so it must be a valid input id.

    Returns:
        A new tensor `(B, T + n)` with `n <= max_new_tokens`, whose first `T` columns are `ids`.

    Raises:
        ValueError: If `ids` is not a 2-D integer tensor with at least one column, or another
            argument is out of range.

    Example:
        >>> table = torch.nn.Embedding(5, 5)
        >>> out = generate(table, torch.tensor([[1, 2]]), 3, temperature=0.0)
        >>> out.shape
        torch.Size([1, 5])
    """
    if ids.dim() != 2 or ids.size(1) < 1 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(
            "generate: ids must be an integer tensor of shape (B, T) with T >= 1,"
            f" got dtype {ids.dtype} and shape {tuple(ids.shape)}"
        )
    if max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be >= 0, got {max_new_tokens!r}")
    if not 0.0 <= temperature < math.inf:
        raise ValueError(
            f"generate: temperature must be a finite number >= 0 (0 is greedy), got {temperature!r}"
        )
    if top_k is not None and top_k < 1:
        raise ValueError(f"generate: top_k must be an int >= 1 or None, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"generate: top_p must be in (0, 1] or None, got {top_p!r}")
    if block_size is None:
        block_size = getattr(getattr(model, "config", None), "block_size", None)
    if block_size is not None and block_size < 1:
        raise ValueError(f"generate: block_size must be an int >= 1 or None, got {block_size!r}")

    out = ids.clone()
    stops = torch.tensor(list(stop_ids), dtype=ids.dtype, device=ids.device)
    finished = torch.zeros(ids.size(0), dtype=torch.bool, device=ids.device)
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            for _ in range(max_new_tokens):
                if bool(finished.all()):
                    break
                context = out if block_size is None else out[:, -block_size:]
                logits = _last_logits(model(context)).float()  # (B, V)
                if temperature == 0.0:
                    token = logits.argmax(dim=-1)  # (B,)
                else:
                    logits = apply_temperature(logits, temperature)
                    if top_k is not None:
                        logits = filter_top_k(logits, top_k)
                    if top_p is not None:
                        logits = filter_top_p(logits, top_p)
                    for logits_filter in filters:
                        logits = logits_filter(logits)
                    probs = torch.softmax(logits, dim=-1)
                    token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
                token = torch.where(finished, pad_id, token.to(ids.dtype))
                out = torch.cat([out, token[:, None]], dim=1)  # (B, T + 1)
                finished |= torch.isin(token, stops)
    finally:
        for module, training in modes:
            module.training = training
    return out

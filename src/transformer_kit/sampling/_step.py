"""One decoding step's model call, shared by `generate` and `beam_search`.

`_next_logits` is the single place the model runs: it crops the context and returns the logits
for the next token. A KV cache would slot in here without touching the decoding loops.

    >>> _next_logits(torch.nn.Embedding(4, 4), torch.tensor([[1, 2]]), None).shape
    torch.Size([1, 4])
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__: list[str] = []


def _check_prompt(ids: Tensor, where: str) -> None:
    """Raise unless `ids` is an integer tensor of shape `(B, T)` with `B, T >= 1`."""
    if (
        ids.dim() != 2
        or ids.size(1) < 1
        or ids.dtype.is_floating_point
        or ids.dtype.is_complex
        or ids.dtype == torch.bool
    ):
        raise ValueError(
            f"{where}: ids must be an integer tensor of shape (B, T) with T >= 1,"
            f" got dtype {ids.dtype} and shape {tuple(ids.shape)}"
        )


def _resolve_block_size(model: nn.Module, block_size: int | None, where: str) -> int | None:
    """`block_size`, else `model.config.block_size` when the model has one, else None."""
    if block_size is None:
        block_size = getattr(getattr(model, "config", None), "block_size", None)
    if block_size is not None and block_size < 1:
        raise ValueError(f"{where}: block_size must be an int >= 1 or None, got {block_size!r}")
    return block_size


@contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Run the body in eval mode under `torch.no_grad()`, then restore every training flag."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def _next_logits(
    model: nn.Module, ids: Tensor, block_size: int | None, where: str = "sampling"
) -> Tensor:
    """Logits `(B, V)` for the token after `ids` `(B, T)`, in at least float32.

    The model sees the last `block_size` tokens (all of them when None) and only its output at
    the last position is used: a full recompute of the cropped context at every step. `where`
    starts the error message.
    """
    context = ids if block_size is None else ids[:, -block_size:]  # (B, <= block_size)
    output = model(context)
    logits = getattr(output, "logits", output)
    if not isinstance(logits, Tensor) or logits.dim() != 3:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"{where}: model(ids) must return logits of shape (B, T, V) or an object with such"
            f" a .logits, got {shape}"
        )
    last = logits[:, -1, :]  # (B, V)
    return last.to(torch.promote_types(last.dtype, torch.float32))

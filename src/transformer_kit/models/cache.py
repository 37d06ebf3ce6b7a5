"""`KVCache`: per-layer keys and values kept between forward calls, for fast generation.

Make one with `model.new_cache(batch_size)`, prefill it with the prompt, then feed one token at a
time: each call computes attention for the new positions only. A rolling cache
(`model.new_cache(batch_size, rolling=True)`) keeps only the last `max_length` positions, so
decoding past the model's training length attends to a sliding window instead of
extrapolating.
    >>> cache = KVCache(n_layer=2, batch_size=1, n_kv_head=2, head_dim=4, max_length=16)
    >>> (cache.length, cache.max_length, tuple(cache.keys[0].shape))
    (0, 16, (1, 2, 16, 4))
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["KVCache"]

# Shapes: B batch, K key/value heads, L max_length, T new positions, D head dim.


class KVCache:
    """Keys and values of every layer, preallocated to `max_length` positions.

    Slots `0 .. length - 1` hold the keys and values of the tokens seen so far (after RoPE and
    qk-norm, so they are reused as they are). `GPT.forward(ids, cache=cache)` writes the new
    tokens at slots `length .. length + T - 1` and then advances `length` by T. Slot i holds
    position `offset + i`: `shift(n)` drops the n oldest slots and adds n to `offset`, so the
    tokens kept keep their positions. A `rolling` cache is shifted by `GPT.forward` whenever new
    tokens would overflow it: each token then attends to the last `max_length` tokens, whose
    keys were computed over their own windows (sliding-window attention). Use it under
    `torch.no_grad()` (or `torch.inference_mode()`, if the cache was made inside it too).

    Args:
        n_layer: number of blocks, one key and one value tensor each.
        batch_size: rows B; every forward with this cache must have B rows.
        n_kv_head: key/value heads stored per layer (`config.kv_heads`, fewer than the query heads
            under grouped-query attention).
        head_dim: width D of one head.
        max_length: positions L to allocate; a forward past it raises.
        dtype: the dtype of the stored tensors (the model's parameter dtype).
        device: where to allocate them.
        rolling: let `GPT.forward` drop the oldest positions instead of refusing tokens past
            `max_length`.

    Example:
        >>> cache = KVCache(n_layer=1, batch_size=2, n_kv_head=1, head_dim=2, max_length=4)
        >>> cache.advance(3); cache.crop(1); cache.length
        1
        >>> cache.advance(3); cache.shift(2); (cache.length, cache.offset, cache.fed)
        (2, 2, 4)
    """

    def __init__(
        self,
        *,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        head_dim: int,
        max_length: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        rolling: bool = False,
    ) -> None:
        for name, value in [
            ("n_layer", n_layer),
            ("batch_size", batch_size),
            ("n_kv_head", n_kv_head),
            ("head_dim", head_dim),
            ("max_length", max_length),
        ]:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"KVCache: {name} must be a positive int, got {value!r}")
        shape = (batch_size, n_kv_head, max_length, head_dim)  # (B, K, L, D)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        """Per-layer keys, each (B, K, L, D); only the first `length` positions are valid."""
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        """Per-layer values, each (B, K, L, D); only the first `length` positions are valid."""
        self.ids = torch.zeros((batch_size, max_length), dtype=torch.long, device=device)
        """The token ids fed so far, (B, L); position features that need the history read it."""
        self.length = 0
        """Number of slots filled; the next token fed goes to this slot."""
        self.offset = 0
        """The position of slot 0: how many positions `shift` dropped since the last reset."""
        self.rolling = rolling
        """Whether `GPT.forward` shifts the cache rather than overflow it."""

    @property
    def fed(self) -> int:
        """Positions fed since the last reset (`offset + length`): the next token's position."""
        return self.offset + self.length

    @property
    def n_layer(self) -> int:
        """Number of layers cached."""
        return len(self.keys)

    @property
    def batch_size(self) -> int:
        """Rows B of every cached tensor."""
        return self.keys[0].shape[0]

    @property
    def max_length(self) -> int:
        """Positions L allocated per layer."""
        return self.keys[0].shape[2]

    def layer(self, index: int) -> tuple[Tensor, Tensor]:
        """The (keys, values) buffers of one layer, each (B, K, L, D), written in place."""
        return self.keys[index], self.values[index]

    def advance(self, n: int) -> None:
        """Mark `n` more positions as filled (`GPT.forward` calls this after writing them).

        Raises:
            ValueError: if `n` is negative or `length + n` exceeds `max_length`.
        """
        if n < 0 or self.length + n > self.max_length:
            raise ValueError(
                f"KVCache.advance: n must be in [0, {self.max_length - self.length}] "
                f"(max_length {self.max_length} - length {self.length}), got {n!r}"
            )
        self.length += n

    def crop(self, length: int) -> None:
        """Keep the first `length` slots and forget the rest (e.g. a rejected suffix).

        Slot i holds position `offset + i`, so afterwards `fed` is `offset + length`.

        Raises:
            ValueError: if `length` is not in [0, current length].
        """
        check_count("KVCache.crop", "length", length, self.length)
        self.length = length

    def shift(self, n: int) -> None:
        """Drop the `n` oldest slots: the rest move to the front and keep their positions.

        Raises:
            ValueError: if `n` is not an int in [0, length].
        """
        check_count("KVCache.shift", "n", n, self.length)
        if n == 0:
            return
        kept = self.length - n
        for buffer in (*self.keys, *self.values):
            buffer[:, :, :kept] = buffer[:, :, n : self.length].clone()  # the ranges overlap
        self.ids[:, :kept] = self.ids[:, n : self.length].clone()
        self.length = kept
        self.offset += n

    def reset(self) -> None:
        """Empty the cache for a new batch of prompts (the buffers are kept and reused)."""
        self.length = 0
        self.offset = 0

    def reorder(self, index: Tensor) -> None:
        """Replace the rows by `rows[index]`, e.g. to follow surviving beams in beam search.

        Args:
            index: int64 (B',) row indices into the current batch; B' becomes the batch size, so
                `index = torch.zeros(k, dtype=torch.long)` copies one prefilled prompt k times.
        """
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        self.ids = self.ids.index_select(0, index)


def check_count(where: str, name: str, value: object, most: int) -> None:
    """Raise a ValueError naming `where` and `name` unless `value` is an int in [0, most]."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise ValueError(f"{where}: {name} must be an int in [0, {most}], got {value!r}")

"""`Ensemble`: several trained models that predict the next token together.

The members' next-token log-probabilities are averaged with weights and renormalised, a product
of experts (Hinton 2002): a token must be likely under every member to stay likely. Two models
with different strengths, say one that knows its voices and one that keeps its key, can then
sample better than either. `combine="mixture"` averages the probabilities instead. `Ensemble`
has the `GPT` calling convention, so `generate`, `beam_search` and any evaluation loop take it
as a model, with a KV cache per member.
    >>> a = GPT(GPTConfig(vocab_size=5, n_layer=1, d_model=8, n_head=2))
    >>> b = GPT(GPTConfig(vocab_size=5, n_layer=1, d_model=8, n_head=2))
    >>> with torch.no_grad():
    ...     log_probs = Ensemble([a, b]).eval()(torch.tensor([[1, 2]])).logits  # (1, 2, 5)
    >>> log_probs.exp().sum(-1).allclose(torch.ones(1, 2))  # a distribution at each position
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from types import SimpleNamespace
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_kit.models.cache import KVCache, check_count
from transformer_kit.models.config import GPTConfig  # noqa: F401  (used by the doctest)
from transformer_kit.models.gpt import GPT, Output  # noqa: F401  (GPT: the doctest)

__all__ = ["CombineKind", "Ensemble", "EnsembleCache"]

CombineKind = Literal["product", "mixture"]
"""How `Ensemble` joins its members' distributions: a weighted geometric or arithmetic mean."""

# Shapes: B batch, T new positions, V vocabulary.


class EnsembleCache:
    """One `KVCache` per member of an `Ensemble`, always at the same length.

    `Ensemble.new_cache` makes it; `Ensemble.forward(ids, cache=...)` feeds member i its cache
    `caches[i]`, after checking that the new tokens fit the smallest one. It offers what
    `generate` and `beam_search` use: `length`, `fed`, `max_length`, `batch_size`,
    `rolling`, `reset()`, `crop(n)` and `reorder(index)`. Rolling member caches may hold
    different windows (each its own model's block_size), so their lengths can differ; `fed`,
    the positions fed since the last reset, is the same in every member, and `crop` keeps it so.
    """

    def __init__(self, caches: Sequence[KVCache]) -> None:
        if not caches:
            raise ValueError("EnsembleCache: caches must hold at least one KVCache, got none")
        self.caches = list(caches)

    @property
    def length(self) -> int:
        """Positions filled: the same in every member's cache until rolling caches shift."""
        return min(cache.length for cache in self.caches)

    @property
    def fed(self) -> int:
        """Positions fed since the last reset, the same in every member's cache."""
        return self.caches[0].fed

    @property
    def rolling(self) -> bool:
        """Whether every member's cache drops its oldest positions rather than overflow."""
        return all(cache.rolling for cache in self.caches)

    @property
    def max_length(self) -> int:
        """Positions allocated: the smallest member cache's."""
        return min(cache.max_length for cache in self.caches)

    @property
    def batch_size(self) -> int:
        """Rows B of every forward with this cache."""
        return self.caches[0].batch_size

    def reset(self) -> None:
        """Empty every member's cache."""
        for cache in self.caches:
            cache.reset()

    def crop(self, length: int) -> None:
        """Forget the newest `self.length - length` positions in every member's cache.

        Every member drops as many positions, so `fed` stays the same in each; without
        rolling caches (equal lengths) this keeps the first `length` positions of each.

        Raises:
            ValueError: if `length` is not an int in [0, length].
        """
        check_count("EnsembleCache.crop", "length", length, self.length)
        drop = self.length - length
        for cache in self.caches:
            cache.crop(cache.length - drop)

    def reorder(self, index: Tensor) -> None:
        """Row i continues row `index[i]`, in every member's cache (beam search)."""
        for cache in self.caches:
            cache.reorder(index)


def _check_unshifted(cache: EnsembleCache, T: int) -> None:
    """Refuse a padding mask when a rolling member has shifted, or must for T new tokens."""
    shifts = [c.rolling and (c.offset > 0 or c.length + T > c.max_length) for c in cache.caches]
    if any(shifts):
        raise ValueError(
            "Ensemble.forward: attention_mask cannot be used with a shifted cache (member "
            f"caches that have shifted or must shift: {shifts}): its columns would no longer "
            "match the cache's slots"
        )


class Ensemble(nn.Module):
    """Models with one vocabulary that predict as one: a product of experts, or a mixture.

    `forward` returns normalised log-probabilities as logits, so `softmax` of them is what
    sampling draws from, and the loss is the cross-entropy of that distribution:

    - `combine="product"` (the default): `log_softmax(sum_i w_i * log_softmax(logits_i))`, the
      renormalised weighted geometric mean of the members' distributions. A token must be
      likely under every member to stay likely, so it is sharper than either member;
    - `combine="mixture"`: `log(sum_i w_i * softmax(logits_i))`, the weighted arithmetic mean.
      Each token's probability lies between the members' own, so it is never sharper than
      the sharpest member, and a token likely under any member stays possible.

    With one member either is that member's `log_softmax`.

    Args:
        models: the members, each called as `model(ids, cache=..., attention_mask=...)` and
            returning `Output` or logits (B, T, V); `GPT` does. All need the same vocabulary.
        weights: one positive finite weight per member, normalised to sum to 1; None means
            equal weights.
        combine: "product" or "mixture" (above).

    Attributes:
        config: `context_limit` (the smallest member's, or None if a member has none),
            `vocab_size` and `pad_id` (from the first member), read by `generate`.

    Raises:
        ValueError: if `models` is empty, the members' `config.vocab_size` differ,
            `weights` has another length or a weight that is not a finite number > 0, or
            `combine` is neither "product" nor "mixture".
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        weights: Sequence[float] | None = None,
        *,
        combine: CombineKind = "product",
    ) -> None:
        super().__init__()
        if combine not in get_args(CombineKind):
            raise ValueError(
                f"Ensemble: combine must be one of {get_args(CombineKind)}, got {combine!r}"
            )
        self.combine: CombineKind = combine
        if len(models) == 0:
            raise ValueError("Ensemble: models must hold at least one model, got none")
        configs = [getattr(model, "config", None) for model in models]
        per_model = [getattr(c, "vocab_size", None) for c in configs]
        sizes = {size for size in per_model if size is not None}
        if len(sizes) > 1:
            raise ValueError(
                f"Ensemble: every model needs the same vocab_size, got {per_model} (per model)"
            )
        if weights is None:
            weights = [1.0] * len(models)
        if len(weights) != len(models):
            raise ValueError(
                f"Ensemble: weights must have one entry per model ({len(models)}), "
                f"got {len(weights)}: {list(weights)!r}"
            )
        for w in weights:
            if isinstance(w, bool) or not isinstance(w, Real) or not 0 < w < math.inf:
                raise ValueError(
                    f"Ensemble: each weight must be a finite number > 0, got {w!r} in "
                    f"{list(weights)!r}"
                )
        total = float(sum(float(w) for w in weights))
        self.models = nn.ModuleList(models)
        self.weights = [float(w) / total for w in weights]
        limits: list[int | None] = [
            getattr(c, "context_limit", getattr(c, "block_size", None)) for c in configs
        ]
        known = [limit for limit in limits if limit is not None]
        self.config = SimpleNamespace(
            context_limit=min(known) if len(known) == len(limits) else None,
            vocab_size=next(iter(sizes), None),
            pad_id=getattr(configs[0], "pad_id", None),
        )

    def forward(
        self,
        ids: Tensor,
        targets: Tensor | None = None,
        *,
        cache: EnsembleCache | None = None,
        attention_mask: Tensor | None = None,
    ) -> Output:
        """Normalised log-probabilities (B, T, V) float32 as logits, and the loss given targets.

        `cache` comes from `new_cache`; `attention_mask` is passed to every member as it is.
        The loss is the mean cross-entropy over targets that are not `config.pad_id`.
        """
        if targets is not None and targets.shape != ids.shape:
            raise ValueError(
                f"Ensemble.forward: targets must have the shape of ids {tuple(ids.shape)}, "
                f"got {tuple(targets.shape)}"
            )
        if cache is not None:
            # Checked before any member runs, so a refused call leaves every cache as it was.
            if len(cache.caches) != len(self.models):
                raise ValueError(
                    f"Ensemble.forward: cache has {len(cache.caches)} member caches but the "
                    f"ensemble has {len(self.models)} models; make it with ensemble.new_cache(B)"
                )
            T = ids.size(1)
            # Rolling members make room for the new tokens themselves.
            overflow = not cache.rolling and cache.length + T > cache.max_length
            limit = self.config.context_limit
            past_limit = limit is not None and cache.fed + T > limit
            if overflow or ids.size(0) != cache.batch_size or past_limit:
                raise ValueError(
                    f"Ensemble.forward: {ids.size(0)} rows of {T} new tokens do not fit the "
                    f"cache ({cache.batch_size} rows, length {cache.length} of "
                    f"{cache.max_length}, {cache.fed} positions fed of context_limit {limit})"
                )
            if attention_mask is not None:  # only a padding mask cares whether a member shifted
                _check_unshifted(cache, T)
        mixed: Tensor | None = None
        for i, (model, weight) in enumerate(zip(self.models, self.weights, strict=True)):
            kwargs: dict[str, object] = {}
            if cache is not None:
                kwargs["cache"] = cache.caches[i]
            if attention_mask is not None:
                kwargs["attention_mask"] = attention_mask
            output = model(ids, **kwargs)
            logits = getattr(output, "logits", output)  # (B, T, V)
            member = F.log_softmax(logits.float(), dim=-1)
            if self.combine == "product":
                part = weight * member
                mixed = part if mixed is None else mixed + part
            else:  # log(sum_i w_i p_i), summed in log space: no underflow of tiny p_i
                part = member + math.log(weight)
                mixed = part if mixed is None else torch.logaddexp(mixed, part)
        assert mixed is not None  # at least one member (checked in __init__)
        log_probs = F.log_softmax(mixed, dim=-1)  # (B, T, V)
        if targets is None:
            return Output(log_probs, None)
        pad_id = self.config.pad_id
        loss = F.nll_loss(
            log_probs.reshape(-1, log_probs.size(-1)),  # (B*T, V)
            targets.reshape(-1),  # (B*T,)
            ignore_index=-100 if pad_id is None else pad_id,
        )
        return Output(log_probs, loss)

    def new_cache(
        self, batch_size: int, max_length: int | None = None, *, rolling: bool = False
    ) -> EnsembleCache:
        """An `EnsembleCache` holding `model.new_cache(batch_size, max_length)` per member.

        None means `config.context_limit` (the smallest member's), so every member's cache has
        the same length and none allocates more than the ensemble can use. With `rolling`,
        each member gets `model.new_cache(batch_size, max_length, rolling=True)`: None then
        means each member's own window (a `GPT`'s block_size, the length it was trained on).

        Raises:
            TypeError: if a member has no `new_cache` (use `generate(..., use_cache=False)`).
        """
        if max_length is None and not rolling:
            max_length = self.config.context_limit
        caches = []
        for i, model in enumerate(self.models):
            new_cache = getattr(model, "new_cache", None)
            if not callable(new_cache):
                raise TypeError(
                    f"Ensemble.new_cache: model {i} ({type(model).__name__}) has no new_cache; "
                    "pass use_cache=False to generate"
                )
            # Only asked for when wanted: a member's own new_cache need not know `rolling`.
            caches.append(
                new_cache(batch_size, max_length, **({"rolling": True} if rolling else {}))
            )
        return EnsembleCache(caches)

"""`GPTConfig`: the frozen, validated description of a decoder-only transformer.

A config is plain data: it round-trips through `to_dict` / `from_dict` (and so through JSON or
YAML) and `GPT(config)` builds the model it describes.
    >>> config = GPTConfig(vocab_size=65, d_model=64, n_head=4)
    >>> (config.head_dim, config.ff_dim)
    (16, 256)

Architecture variants (position scheme, norm, MLP, grouped-query attention) are added as typed
`Literal` fields here, each checked in `__post_init__`, and chosen in one `_make_*` function in
gpt.py. Only the plain GPT-2 architecture exists today, so there are no such fields yet.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["GPTConfig"]

_POSITIVE_INT_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "d_model")
_BOOL_FIELDS = ("bias", "tie_weights")


@dataclass(frozen=True, slots=True, kw_only=True)
class GPTConfig:
    """Hyperparameters of a GPT-2 style decoder-only transformer.

    Raises:
        ValueError: if a field has a value outside its allowed range; the message names the field,
            the value and what is allowed.

    Example:
        >>> GPTConfig(vocab_size=65, n_layer=2).to_dict()["n_layer"]
        2
    """

    vocab_size: int
    """Number of token ids: rows of the token embedding, columns of the output layer."""
    block_size: int = 256
    """Longest sequence the model accepts (rows of the learned position embedding)."""
    n_layer: int = 4
    """Number of transformer blocks."""
    n_head: int = 4
    """Attention heads per block; must divide `d_model`."""
    d_model: int = 128
    """Width of the residual stream (embedding size)."""
    d_ff: int | None = None
    """Hidden width of the MLP; None means 4 * d_model. Read the resolved value from `ff_dim`."""
    dropout: float = 0.0
    """Dropout probability on the embeddings and on each residual branch output, in [0, 1)."""
    bias: bool = True
    """Whether the Linear layers (except the output head) and the LayerNorms carry biases."""
    tie_weights: bool = True
    """Share one matrix between the token embedding and the output head (Press & Wolf, 2017)."""
    pad_id: int | None = 0
    """Target id that the loss ignores; None means every target counts."""

    def __post_init__(self) -> None:
        for name in _POSITIVE_INT_FIELDS:
            _check_positive_int(name, getattr(self, name))
        if self.d_ff is not None:
            _check_positive_int("d_ff", self.d_ff)
        if self.d_model % self.n_head:
            raise ValueError(
                f"GPTConfig: d_model ({self.d_model}) must be divisible by n_head ({self.n_head})"
            )
        dropout = self.dropout
        # NaN fails the range check too: every comparison with NaN is False.
        if (
            isinstance(dropout, bool)
            or not isinstance(dropout, int | float)
            or not 0.0 <= dropout < 1.0
        ):
            raise ValueError(f"GPTConfig: dropout must be a float in [0, 1), got {dropout!r}")
        for name in _BOOL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"GPTConfig: {name} must be a bool, got {value!r}")
        pad_id = self.pad_id
        if pad_id is not None and (
            isinstance(pad_id, bool)
            or not isinstance(pad_id, int)
            or not 0 <= pad_id < self.vocab_size
        ):
            raise ValueError(
                f"GPTConfig: pad_id must be None or an int in [0, vocab_size={self.vocab_size}), "
                f"got {pad_id!r}"
            )

    @property
    def head_dim(self) -> int:
        """Width of one attention head: d_model // n_head."""
        return self.d_model // self.n_head

    @property
    def ff_dim(self) -> int:
        """Hidden width of the MLP: `d_ff`, or 4 * d_model when `d_ff` is None.

        The factor 4 is Vaswani et al. 2017, sec. 3.3 (2048 / 512), kept by GPT-1 and GPT-2.
        """
        return 4 * self.d_model if self.d_ff is None else self.d_ff

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a plain dict of ints, floats, bools and None (JSON-able)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GPTConfig:
        """Build a config from a mapping such as the output of `to_dict`.

        Raises:
            ValueError: if `d` has keys that are not fields (the message lists them and the valid
                keys), lacks `vocab_size`, or holds an invalid value.
        """
        valid = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(f"GPTConfig.from_dict: unknown keys {unknown}; valid keys are {valid}")
        if "vocab_size" not in d:
            raise ValueError("GPTConfig.from_dict: the required key 'vocab_size' is missing")
        return cls(**d)


def _check_positive_int(name: str, value: object) -> None:
    # bool is a subclass of int; True must not pass as n_layer=1.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"GPTConfig: {name} must be a positive int, got {value!r}")

"""`GPTConfig`: the frozen, validated description of a decoder-only transformer.

A config is plain data: it round-trips through `to_dict` / `from_dict` (and so through JSON or
YAML) and `GPT(config)` builds the model it describes.
    >>> config = GPTConfig(vocab_size=65, d_model=64, n_head=4)
    >>> (config.head_dim, config.ff_dim)
    (16, 256)

Architecture variants are typed `Literal` fields (`position`, `norm`, `mlp`) plus `n_kv_head`
and `qk_norm`; each defaults to the plain GPT-2 choice, is checked in `__post_init__`, and is
chosen in one `_make_*` function (layers.py, gpt.py) or one visible `if` (attention.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

__all__ = ["GPTConfig", "MlpKind", "NormKind", "PositionKind"]

PositionKind = Literal["learned", "sinusoidal", "rope", "alibi"]
NormKind = Literal["layernorm", "rmsnorm"]
MlpKind = Literal["gelu", "swiglu", "relu2"]

_POSITIVE_INT_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "d_model")
_BOOL_FIELDS = ("bias", "tie_weights", "qk_norm", "zero_init_output", "gradient_checkpointing")
_PROBABILITY_FIELDS = ("dropout", "attn_dropout")
_CHOICE_FIELDS = {"position": PositionKind, "norm": NormKind, "mlp": MlpKind}
# Position schemes that act inside attention and so extrapolate past block_size.
_RELATIVE_POSITIONS = ("rope", "alibi")


@dataclass(frozen=True, slots=True, kw_only=True)
class GPTConfig:
    """Hyperparameters of a GPT-2 style decoder-only transformer and its variants.

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
    """Training context length: the longest sequence for learned/sinusoidal positions."""
    n_layer: int = 4
    """Number of transformer blocks."""
    n_head: int = 4
    """Query heads per block; must divide `d_model`."""
    d_model: int = 128
    """Width of the residual stream (embedding size)."""
    d_ff: int | None = None
    """Hidden width of the MLP; None picks a default per `mlp` (read the result from `ff_dim`)."""
    dropout: float = 0.0
    """Dropout probability on the embeddings and on each residual branch output, in [0, 1)."""
    bias: bool = True
    """Whether the Linear layers (except the output head) and the LayerNorms carry biases."""
    tie_weights: bool = True
    """Share one matrix between the token embedding and the output head (Press & Wolf, 2017)."""
    pad_id: int | None = 0
    """Target id that the loss ignores; None means every target counts."""
    position: PositionKind = "learned"
    """Position scheme: "learned" table (GPT-2), "sinusoidal" (Vaswani et al. 2017, sec. 3.5),
    "rope" rotary (Su et al. 2021) or "alibi" linear biases (Press et al. 2022)."""
    norm: NormKind = "layernorm"
    """Pre-norm flavour; "rmsnorm" (Zhang & Sennrich 2019) drops the mean-centring and the bias."""
    mlp: MlpKind = "gelu"
    """Feed-forward flavour: "gelu" (GPT-2), "swiglu" (Shazeer 2020) or "relu2" (squared ReLU,
    So et al. 2021, Primer)."""
    n_kv_head: int | None = None
    """Key/value heads for grouped-query attention (Ainslie et al. 2023); must divide n_head.
    None means n_head (multi-head attention); 1 is multi-query attention."""
    qk_norm: bool = False
    """Normalise queries and keys per head (with `norm`) before attention (Dehghani et al. 2023)."""
    zero_init_output: bool = False
    """Initialise the residual output projections (attn.proj, mlp.proj) to zero, so each block
    starts as the identity (Zhang et al. 2019, Fixup), instead of GPT-2's depth-scaled normal."""
    attn_dropout: float = 0.0
    """Dropout probability on the attention weights, in [0, 1). Any value > 0 moves torch's CPU
    attention off its fused kernel (see docs/models.md for the measured cost)."""
    max_position: int | None = None
    """For "rope" / "alibi" only: the longest sequence (prompt + generated) the model may process,
    >= block_size; None means block_size. Learned and sinusoidal positions cannot extrapolate."""
    gradient_checkpointing: bool = False
    """Recompute each block's activations in the backward pass instead of storing them."""

    def __post_init__(self) -> None:
        for name in _POSITIVE_INT_FIELDS:
            _check_positive_int(name, getattr(self, name))
        if self.d_ff is not None:
            _check_positive_int("d_ff", self.d_ff)
        if self.d_model % self.n_head:
            raise ValueError(
                f"GPTConfig: d_model ({self.d_model}) must be divisible by n_head ({self.n_head})"
            )
        for name in _PROBABILITY_FIELDS:
            value = getattr(self, name)
            # NaN fails the range check too: every comparison with NaN is False.
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
                raise ValueError(f"GPTConfig: {name} must be a float in [0, 1), got {value!r}")
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
        for name, kind in _CHOICE_FIELDS.items():
            value = getattr(self, name)
            if value not in get_args(kind):
                raise ValueError(
                    f"GPTConfig: {name} must be one of {get_args(kind)}, got {value!r}"
                )
        self._check_attention_fields()

    def _check_attention_fields(self) -> None:
        if self.n_kv_head is not None:
            _check_positive_int("n_kv_head", self.n_kv_head)
            if self.n_head % self.n_kv_head:
                raise ValueError(
                    f"GPTConfig: n_kv_head must be a divisor of n_head ({self.n_head}), "
                    f"got {self.n_kv_head!r}"
                )
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(
                f"GPTConfig: position 'rope' rotates pairs of channels, so head_dim "
                f"(d_model / n_head = {self.head_dim}) must be even"
            )
        limit = self.max_position
        if limit is None:
            return
        if self.position not in _RELATIVE_POSITIONS:
            raise ValueError(
                f"GPTConfig: max_position must be None for position {self.position!r} (it "
                f"cannot extrapolate past block_size); got {limit!r}. It applies to "
                f"{_RELATIVE_POSITIONS} only"
            )
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < self.block_size:
            raise ValueError(
                f"GPTConfig: max_position must be None or an int >= block_size "
                f"({self.block_size}), got {limit!r}"
            )

    @property
    def head_dim(self) -> int:
        """Width of one attention head: d_model // n_head."""
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        """Key/value heads: `n_kv_head`, or n_head when it is None."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def ff_dim(self) -> int:
        """Hidden width of the MLP: `d_ff` when set, else a default that depends on `mlp`.

        "gelu" and "relu2" use 4 * d_model (Vaswani et al. 2017, sec. 3.3: 2048 / 512, kept by
        GPT-1 and GPT-2). "swiglu" has three matrices instead of two, so it uses 2/3 of that,
        8 * d_model // 3, to keep parameters and FLOPs equal (Shazeer 2020, sec. 2).
        """
        if self.d_ff is not None:
            return self.d_ff
        return 8 * self.d_model // 3 if self.mlp == "swiglu" else 4 * self.d_model

    @property
    def context_limit(self) -> int:
        """Longest sequence (cached + new tokens) the model accepts.

        block_size for learned and sinusoidal positions; `max_position` (else block_size) for
        rope and alibi, which work at any position.
        """
        return self.block_size if self.max_position is None else self.max_position

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a plain dict of ints, floats, bools, str and None (JSON-able)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GPTConfig:
        """Build a config from a mapping such as the output of `to_dict`.

        Missing keys take their defaults, so dicts saved before a field existed still load.

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

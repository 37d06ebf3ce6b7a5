"""Position schemes: sinusoidal embeddings, rotary embeddings (RoPE) and ALiBi biases.

Each is computed from integer positions on the fly (no stored tables, no buffers), so it works
at any absolute position, on any device, and keeps float32 precision when the model is cast to
bf16. RoPE's cosines and sines are computed once per forward (`rope_tables`) and shared by
every layer.
"Learned" positions are a plain `nn.Embedding` and need nothing here.
    >>> SinusoidalPositions(4)(torch.tensor([0])).tolist()
    [[0.0, 1.0, 0.0, 1.0]]
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "RopeTables",
    "SinusoidalPositions",
    "alibi_bias",
    "alibi_slopes",
    "apply_rope",
    "rope_tables",
    "rotate",
]

# Shapes: B batch, H heads, T query positions, S key positions, C d_model, D head dim.

# Vaswani et al. 2017, sec. 3.5: wavelengths form a geometric progression from 2pi to 10000 * 2pi.
_SINUSOID_BASE = 10_000.0
# Su et al. 2021 (RoFormer), eq. 15: theta_i = 10000^(-2i / D), the same base as the sinusoids.
_ROPE_BASE = 10_000.0
# Press et al. 2022 (ALiBi), sec. 3: head slopes form a geometric sequence from 2^(-8/n) to 2^-8.
_ALIBI_MAX_EXPONENT = 8


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal position embedding (Vaswani et al. 2017, sec. 3.5); no parameters.

    PE(p, 2i) = sin(p / 10000^(2i/C)) and PE(p, 2i + 1) = cos(p / 10000^(2i/C)). Called like an
    `nn.Embedding` on positions, so `GPT` uses it in place of the learned table.
    """

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model

    def forward(self, positions: Tensor) -> Tensor:
        """Map integer positions (T,) or (B, T) to float32 embeddings (T, C) or (B, T, C)."""
        half = (self.d_model + 1) // 2  # an odd C drops the last cosine
        exponents = torch.arange(half, device=positions.device, dtype=torch.float32)  # (C/2,)
        inv_freq = _SINUSOID_BASE ** (-2 * exponents / self.d_model)  # (C/2,)
        angles = positions.float()[..., None] * inv_freq  # (..., T, C/2)
        table = torch.stack([angles.sin(), angles.cos()], dim=-1)  # (..., T, C/2, 2)
        return table.flatten(-2)[..., : self.d_model]  # (..., T, C): sin, cos interleaved

    def extra_repr(self) -> str:
        """Show the width in the module's repr."""
        return f"d_model={self.d_model}"


class RopeTables:
    """RoPE's cosines and signed sines for one forward, float32, from `rope_tables`.

    `cos` holds `[cos, cos]` and `sin` holds `[-sin, sin]` over the two halves of a head, each
    (T, D), or (B, 1, T, D) for per-row positions. A plain class, not a tuple: wrappers that
    cast a block's floating-point inputs (FSDP2's mixed precision casts them to its
    `param_dtype`) do not look inside it, so the angles stay float32 in a bf16 model.
    """

    __slots__ = ("cos", "sin")

    def __init__(self, cos: Tensor, sin: Tensor) -> None:
        self.cos = cos
        self.sin = sin


def rope_tables(positions: Tensor, head_dim: int) -> RopeTables:
    """The cosines and signed sines that `rotate` applies, for RoPE at `positions`.

    Computed once per forward and shared by every layer and by queries and keys: the angle of
    channel pair i at position p is p * 10000^(-2i/D) (Su et al. 2021, eq. 15).

    Args:
        positions: (T,) integer positions shared by the batch, or (B, T) per row.
        head_dim: D, even.

    Returns:
        The tables, float32, each (T, D) or (B, 1, T, D): rotating is then two products and
        one sum.
    """
    half = head_dim // 2
    exponents = torch.arange(half, device=positions.device, dtype=torch.float32)  # (D/2,)
    inv_freq = _ROPE_BASE ** (-exponents / half)  # (D/2,): 10000^(-2i/D)
    angles = positions.float()[..., None] * inv_freq  # (T, D/2) or (B, T, D/2)
    if angles.dim() == 3:
        angles = angles[:, None]  # (B, 1, T, D/2): one set of angles per row, shared by heads
    cos, sin = angles.cos(), angles.sin()
    return RopeTables(torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1))


def rotate(x: Tensor, tables: RopeTables) -> Tensor:
    """Rotate queries or keys (B, H, T, D) by `rope_tables`; float32 math, x's dtype out.

    Channel i is paired with channel i + D/2 (the "rotate half" layout of GPT-NeoX and LLaMA):
    the first half becomes x1 cos - x2 sin and the second x2 cos + x1 sin.
    """
    x32 = x.float()
    x1, x2 = x32.chunk(2, dim=-1)  # (B, H, T, D/2) each
    rotated = x32 * tables.cos + torch.cat([x2, x1], dim=-1) * tables.sin  # (B, H, T, D)
    return rotated.to(x.dtype)


def apply_rope(x: Tensor, positions: Tensor) -> Tensor:
    """Rotate queries or keys by their absolute positions (RoPE, Su et al. 2021).

    The dot product of a query rotated at p and a key rotated at s then depends on p - s only.
    `rotate(x, rope_tables(positions, D))`; a model computes the tables once per forward.

    Args:
        x: queries or keys, (B, H, T, D) with D even.
        positions: positions of the T rows, (T,) integers shared by the batch, or (B, T) per
            row (left-padded batches, where each row counts from its first real token).

    Returns:
        The rotated tensor, (B, H, T, D).
    """
    return rotate(x, rope_tables(positions, x.shape[-1]))


def alibi_slopes(n_head: int, device: torch.device | str | None = None) -> Tensor:
    """Per-head ALiBi slopes, float32 (H,) (Press et al. 2022, sec. 3 and their reference code).

    For a power of two n, head h (from 0) gets 2^(-8 (h + 1) / n). Otherwise the n' = largest
    power of two below n heads get the n' slopes, and the rest take every other slope of 2n'
    (h + 1 = 1, 3, 5, ... over 2n'). Built with tensor ops on `device`, so no host copy.
        >>> alibi_slopes(4).tolist()
        [0.25, 0.0625, 0.015625, 0.00390625]
    """
    closest = 2 ** int(math.log2(n_head))
    steps = torch.arange(1, closest + 1, device=device, dtype=torch.float32)  # (n',)
    odd_steps = 2 * torch.arange(n_head - closest, device=device, dtype=torch.float32) + 1
    return torch.cat(
        [
            torch.exp2(-_ALIBI_MAX_EXPONENT * steps / closest),
            torch.exp2(-_ALIBI_MAX_EXPONENT * odd_steps / (2 * closest)),
        ]
    )  # (H,)


def alibi_bias(slopes: Tensor, query_positions: Tensor, key_positions: Tensor) -> Tensor:
    """Additive attention bias: -slope * distance to past keys, -inf for future keys.

    Args:
        slopes: (H,) from `alibi_slopes`.
        query_positions: absolute positions of the queries, (T,).
        key_positions: absolute positions of the keys, (S,).

    Returns:
        Bias to add to the attention scores, float32 (H, T, S); it also applies the causal mask.
    """
    distance = (key_positions[None, :] - query_positions[:, None]).float()  # (T, S), <= 0 if past
    bias = slopes.float()[:, None, None] * distance  # (H, T, S)
    return bias.masked_fill(distance > 0, float("-inf"))  # (H, T, S)

"""Feed-forward and normalisation layers, each variant a small class chosen in one `_make_*`.

`_make_mlp(config)` picks the MLP for `config.mlp` and `_make_norm(config)` the norm for
`config.norm`; `Block` and attention call only these two.
    >>> mlp = _make_mlp(GPTConfig(vocab_size=8, d_model=12, mlp="swiglu"))
    >>> (type(mlp).__name__, mlp.fc.out_features, mlp.proj.in_features)
    ('SwiGLU', 64, 32)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from transformer_kit.models.config import GPTConfig

__all__ = ["MLP", "ReLUSquared", "SwiGLU"]

# Shapes: B batch, T time, C d_model, F ff_dim.

# nn.LayerNorm's default epsilon, used for RMSNorm too so that switching `norm` changes only the
# mean-centring and the bias.
_NORM_EPS = 1e-5


class ReLUSquared(nn.Module):
    """relu(x)^2, the activation Primer found by search (So et al. 2021, sec. 4)."""

    def forward(self, x: Tensor) -> Tensor:
        """Apply elementwise; any shape."""
        return F.relu(x).square()


class MLP(nn.Module):
    """Position-wise feed-forward network: Linear(C, F) -> activation -> Linear(F, C).

    Args:
        config: gives the widths, `bias` and `dropout`.
        activation: the elementwise non-linearity; None means exact (erf) GELU, as PyTorch
            defaults to (GPT-2 used the tanh approximation).
    """

    def __init__(self, config: GPTConfig, activation: nn.Module | None = None) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.ff_dim, bias=config.bias)
        self.act = nn.GELU() if activation is None else activation
        # Down projection into the residual stream; GPT scales its init (see GPT.__init__).
        self.proj = nn.Linear(config.ff_dim, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, T, C) to (B, T, C)."""
        return self.dropout(self.proj(self.act(self.fc(x))))


class SwiGLU(nn.Module):
    """Gated feed-forward network: Linear(F, C)(silu(x W_gate) * (x W_up)) (Shazeer 2020, eq. 6).

    `fc` holds W_gate and W_up stacked as one (C -> 2F) Linear, so one matmul makes both.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, 2 * config.ff_dim, bias=config.bias)
        self.proj = nn.Linear(config.ff_dim, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, T, C) to (B, T, C)."""
        gate, up = self.fc(x).chunk(2, dim=-1)  # 2 x (B, T, F)
        return self.dropout(self.proj(F.silu(gate) * up))


def _make_mlp(config: GPTConfig) -> nn.Module:
    """The feed-forward layer for `config.mlp`; every choice names its layers `fc` and `proj`."""
    if config.mlp == "swiglu":
        return SwiGLU(config)
    if config.mlp == "relu2":
        return MLP(config, activation=ReLUSquared())
    return MLP(config)


def _make_norm(config: GPTConfig, dim: int | None = None) -> nn.Module:
    """The normalisation layer for `config.norm` over the last `dim` (default d_model) features."""
    width = config.d_model if dim is None else dim
    if config.norm == "rmsnorm":
        # Zhang & Sennrich 2019: x / rms(x) * gain, no centring, no bias.
        return nn.RMSNorm(width, eps=_NORM_EPS)
    return nn.LayerNorm(width, eps=_NORM_EPS, bias=config.bias)

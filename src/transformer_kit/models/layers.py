"""Feed-forward and normalisation layers, each variant a small class chosen in one `_make_*`.

`_make_mlp(config)` picks the MLP for `config.mlp` and `_make_norm(config)` the norm for
`config.norm`; `Block` and attention call only these two. `pack_float16_linears` makes an
inference copy of a model whose Linear weights are stored in float16, for faster CPU decoding.
    >>> mlp = _make_mlp(GPTConfig(vocab_size=8, d_model=12, mlp="swiglu"))
    >>> (type(mlp).__name__, mlp.fc.out_features, mlp.proj.in_features)
    ('SwiGLU', 64, 32)
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_kit.models.config import GPTConfig

__all__ = ["GELU", "MLP", "Float16Linear", "ReLUSquared", "SwiGLU", "pack_float16_linears"]

# Shapes: B batch, T time, C d_model, F ff_dim.

# nn.LayerNorm's default epsilon, used for RMSNorm too so that switching `norm` changes only the
# mean-centring and the bias.
_NORM_EPS = 1e-5
# torch 2.13 runs float32 GELU on the CPU through oneDNN, which costs about 8 us per call
# whatever the size: 6x its native erf kernel at 1024 values (one decoded token), 2x faster than
# it at 400k values (a training batch). Below this many values, inference uses the erf formula.
_SMALL_GELU = 65_536
_SQRT_HALF = 1 / math.sqrt(2)
# Float16Linear: torch.fbgemm_linear_fp16_weight (one thread, least overhead) up to this many
# input rows; at 2 threads it was 1.6x faster than the threaded kernel at 8 rows, about as fast
# at 32, and 0.7x as fast at 256 (docs/benchmarks.md).
_ROWS_KERNEL_MAX = 16
_HAS_ROWS_KERNEL = hasattr(torch, "fbgemm_linear_fp16_weight") and hasattr(
    torch, "fbgemm_pack_gemm_matrix_fp16"
)


class ReLUSquared(nn.Module):
    """relu(x)^2, the activation Primer found by search (So et al. 2021, sec. 4)."""

    def forward(self, x: Tensor) -> Tensor:
        """Apply elementwise; any shape."""
        return F.relu(x).square()


class GELU(nn.GELU):
    """Exact GELU, x Phi(x) = x (1 + erf(x / sqrt 2)) / 2 (Hendrycks & Gimpel 2016), as `nn.GELU`.

    The same function, computed as the formula (five ops, the last three in place on a fresh
    tensor) for small float32 CPU inputs outside autograd (decoding a few tokens), where
    torch's oneDNN kernel costs more to call than to run; that made a cached decoding step of
    the Bach model about 7% faster. On |x| <= 12 the formula is within 4.4e-7 of a float64
    reference and `F.gelu` within 1.2e-6. Everything else goes to `F.gelu`.
    """

    def forward(self, x: Tensor) -> Tensor:
        """Apply elementwise; any shape."""
        if (
            x.numel() <= _SMALL_GELU
            and x.dtype == torch.float32
            and x.device.type == "cpu"
            and not (x.requires_grad and torch.is_grad_enabled())
            and self.approximate == "none"
        ):
            y = torch.erf(x * _SQRT_HALF)
            return y.add_(1.0).mul_(x).mul_(0.5)
        return F.gelu(x, approximate=self.approximate)


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
        self.act = GELU() if activation is None else activation
        # Down projection into the residual stream; GPT scales its init (see GPT.__init__).
        self.proj = nn.Linear(config.ff_dim, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, T, C) to (B, T, C)."""
        y = self.proj(self.act(self.fc(x)))
        return self.dropout(y) if self.training else y  # identity in eval: skip the call


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
        y = self.proj(F.silu(gate) * up)
        return self.dropout(y) if self.training else y  # identity in eval: skip the call


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


class Float16Linear(nn.Module):
    """An inference-only stand-in for a float32 CPU `nn.Linear`, with its weight in float16.

    It computes `F.linear(x, weight.half().float(), bias)`: only the stored weight is rounded
    to float16 (a relative error of at most 2^-11 per entry); inputs, sums, bias and outputs
    stay float32. The weight is packed once for fbgemm's fp16 matrix kernels (x86 CPUs), which
    read half the bytes of the float32 weight. Decoding one token at batch 1 is bound by
    reading the weights.

    There are two packings of the same rounded weight, each used where it is faster (measured
    on a 2-core AVX2 CPU, docs/benchmarks.md):

    - up to `_ROWS_KERNEL_MAX` input rows (or at one intra-op thread):
      `torch.fbgemm_linear_fp16_weight`, whose call costs least; at one row it ran 2.1-2.3x
      faster than float32 `F.linear`. It runs on one thread, and torch marks it deprecated, so
      builds without it use the other kernel for every call;
    - more rows, and under `torch.compile` or `torch.jit.trace` (the few-rows kernel has no
      fake-tensor or serialisable form): `torch.ops.quantized.linear_dynamic_fp16`, which
      splits the rows over torch's threads (prefill, large batches).

    The two packings together take as many bytes as the float32 weight; each call reads one.
    It holds no parameters or buffers (nothing to train, nothing in `state_dict`): convert a
    trained float32 model with `pack_float16_linears` and keep that model for saving. The
    few-rows packing is a handle that torch refuses to use once its bytes are copied, so
    copies (`copy.deepcopy`) and pickles pack it again.

    Args:
        linear: the float32 CPU layer whose weight and bias are copied; it is left unchanged.

    Raises:
        ValueError: if `linear`'s weight is not a float32 CPU tensor.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()
        if weight.dtype != torch.float32 or weight.device.type != "cpu":
            raise ValueError(
                "Float16Linear: linear must hold a float32 CPU weight, got "
                f"{weight.dtype} on {weight.device}"
            )
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self._packed = torch.ops.quantized.linear_prepack_fp16(weight, bias)
        # The few-rows packing: fbgemm's packed weight (a raw pointer) and the bias.
        self._rows: tuple[Tensor, Tensor] | None = None
        self._pack_rows()

    def _pack_rows(self) -> None:
        """Build the few-rows packing from `_packed` (a handle: copies of it are unusable)."""
        if not _HAS_ROWS_KERNEL:
            return
        weight, bias = torch.ops.quantized.linear_unpack_fp16(self._packed)  # rounded, float32
        if bias is None:  # the kernel takes a bias; zeros add nothing
            bias = torch.zeros(self.out_features)
        with warnings.catch_warnings():
            # torch warns once per process that these functions are deprecated; pack and run
            # one row here so that the warning is spent where it is silenced.
            warnings.filterwarnings("ignore", message=r".*deprecated", category=UserWarning)
            packed = torch.fbgemm_pack_gemm_matrix_fp16(weight)
            torch.fbgemm_linear_fp16_weight(torch.zeros(1, self.in_features), packed, bias)
        self._rows = (packed, bias)

    def forward(self, x: Tensor) -> Tensor:
        """Map float32 (..., in_features) to float32 (..., out_features)."""
        if (
            self._rows is None
            or torch.compiler.is_compiling()
            or torch.jit.is_tracing()
            or (x.numel() > _ROWS_KERNEL_MAX * x.shape[-1] and torch.get_num_threads() > 1)
        ):
            return torch.ops.quantized.linear_dynamic_fp16(x, self._packed)
        out = torch.fbgemm_linear_fp16_weight(x.reshape(-1, x.shape[-1]), *self._rows)
        return out.view(*x.shape[:-1], self.out_features)  # (rows, out) back to x's leading dims

    def __getstate__(self) -> dict[str, object]:
        """Everything but the few-rows packing, which `__setstate__` rebuilds."""
        state = self.__dict__.copy()
        state["_rows"] = None
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        super().__setstate__(state)
        self._pack_rows()

    def extra_repr(self) -> str:
        """Show the widths in the module's repr, as nn.Linear does."""
        return f"in_features={self.in_features}, out_features={self.out_features}"


def pack_float16_linears(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode whose `nn.Linear` layers are `Float16Linear`s.

    For faster generation on x86 CPUs, at the cost of rounding those weights to float16: on the
    benchmark model the logits moved by at most 5.4e-4, so a greedy token can flip only where
    the top two logits are about that close (docs/benchmarks.md). `model` itself is not
    changed. Only plain `nn.Linear` modules whose weight no other module shares are converted,
    so a head tied to the token embedding stays float32. The copy is for inference only (it has
    no Linear parameters to train) and should not be saved in place of `model`.

    Raises:
        RuntimeError: if this torch build has no fbgemm engine (non-x86 CPUs).
        ValueError: if a Linear to convert is not a float32 CPU layer.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
        >>> fast = pack_float16_linears(net)
        >>> [type(m).__name__ for m in fast], fast(torch.ones(1, 4)).shape
        (['Float16Linear', 'GELU', 'Float16Linear'], torch.Size([1, 2]))
    """
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        raise RuntimeError(
            "pack_float16_linears: needs torch's fbgemm engine (x86 CPUs); this build has "
            f"{torch.backends.quantized.supported_engines}"
        )
    packed = copy.deepcopy(model).eval()
    # A tensor that two modules hold (a tied head) keeps its float32 Parameter.
    holders: dict[int, int] = {}
    for module in packed.modules():
        for param in module.parameters(recurse=False):
            holders[id(param)] = holders.get(id(param), 0) + 1
    for parent in list(packed.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and holders[id(child.weight)] == 1:
                setattr(parent, name, Float16Linear(child))
    return packed

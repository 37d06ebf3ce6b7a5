"""Tests for transformer_kit.models: config validation and round trips, GPT vs references."""

from __future__ import annotations

import copy
import dataclasses
import doctest
import functools
import gc
import importlib
import io
import itertools
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path
from typing import get_args

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.testing import assert_close
from torch.utils._python_dispatch import TorchDispatchMode

from transformer_kit.models import (
    GPT,
    BarPositionFeatures,
    GPTConfig,
    KVCache,
    MlpKind,
    NormKind,
    PositionKind,
)
from transformer_kit.models import attention as attention_module
from transformer_kit.models import layers as layers_module
from transformer_kit.models.attention import _matmul_attention
from transformer_kit.models.layers import GELU, Float16Linear, pack_float16_linears
from transformer_kit.models.positional import (
    RopeTables,
    alibi_slopes,
    apply_rope,
    rope_tables,
    rotate,
)

# Shapes: B batch, T time, C d_model, H heads, K kv heads, D head dim, F ff dim, V vocab.

VOCAB = 11
BLOCK = 8
POSITIONS = get_args(PositionKind)
NORMS = get_args(NormKind)
MLPS = get_args(MlpKind)
RELATIVE = ("rope", "alibi")
# Every (position, norm, mlp) combination.
VARIANTS = list(itertools.product(POSITIONS, NORMS, MLPS))
# Attention options layered on each combination: (n_kv_head, qk_norm) with n_head=4.
ATTENTION = [(None, False), (2, True), (1, False)]


pytestmark = pytest.mark.usefixtures("one_thread_module")


def _config(**overrides: object) -> GPTConfig:
    fields: dict[str, object] = {
        "vocab_size": VOCAB,
        "block_size": BLOCK,
        "n_layer": 2,
        "n_head": 2,
        "d_model": 16,
    }
    fields.update(overrides)
    return GPTConfig.from_dict(fields)


def _model(seed: int = 0, **overrides: object) -> GPT:
    torch.manual_seed(seed)
    return GPT(_config(**overrides))


def _ids(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# GPTConfig


def test_config_defaults_and_derived_properties() -> None:
    config = GPTConfig(vocab_size=65)
    assert (config.block_size, config.n_layer, config.n_head, config.d_model) == (256, 4, 4, 128)
    assert (config.d_ff, config.dropout, config.bias, config.tie_weights, config.pad_id) == (
        None,
        0.0,
        True,
        True,
        0,
    )
    assert config.head_dim == 32
    assert config.ff_dim == 512
    assert GPTConfig(vocab_size=65, d_ff=100).ff_dim == 100


BAD_VALUES = [
    ("vocab_size", 0),
    ("vocab_size", -3),
    ("vocab_size", 2.0),
    ("vocab_size", True),
    ("block_size", 0),
    ("n_layer", 0),
    ("n_layer", "2"),
    ("n_head", -1),
    ("d_model", 0),
    ("d_ff", 0),
    ("d_ff", 1.5),
    ("dropout", -0.1),
    ("dropout", 1.0),
    ("dropout", float("nan")),
    ("dropout", True),
    ("dropout", "0.1"),
    ("bias", 1),
    ("tie_weights", "yes"),
    ("pad_id", -1),
    ("pad_id", 65),
    ("pad_id", 1.0),
    ("pad_id", False),
    ("position", "relative"),
    ("position", None),
    ("norm", "batchnorm"),
    ("mlp", "glu"),
    ("n_kv_head", 0),
    ("n_kv_head", 3),
    ("n_kv_head", 2.0),
    ("qk_norm", 1),
    ("zero_init_output", "no"),
    ("gradient_checkpointing", None),
    ("attn_dropout", 1.0),
    ("attn_dropout", -0.1),
    ("attn_dropout", True),
    ("max_position", 512),  # the default position "learned" cannot extrapolate
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_config_rejects_bad_value_naming_field_and_value(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"{field} must be") as info:
        GPTConfig(**{"vocab_size": 65, field: value})  # type: ignore[arg-type]
    assert repr(value) in str(info.value)


def test_config_rejects_d_model_not_divisible_by_n_head() -> None:
    with pytest.raises(ValueError, match=r"d_model \(30\) must be divisible by n_head \(4\)"):
        GPTConfig(vocab_size=65, d_model=30, n_head=4)


def test_config_is_frozen_and_keyword_only() -> None:
    config = GPTConfig(vocab_size=65)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n_layer = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        GPTConfig(65)  # type: ignore[misc]


@st.composite
def _valid_configs(draw: st.DrawFn) -> GPTConfig:
    heads = draw(st.integers(1, 64))
    head_dim = draw(st.integers(1, 64))
    vocab = draw(st.integers(1, 100_000))
    block = draw(st.integers(1, 8192))
    position = draw(st.sampled_from(POSITIONS))
    if position == "rope":
        head_dim += head_dim % 2  # rope pairs channels
    max_position = None
    if position in RELATIVE:
        max_position = draw(st.none() | st.integers(block, 100_000))
    pad = draw(st.none() | st.integers(0, 100_000))
    return GPTConfig(
        vocab_size=vocab,
        block_size=block,
        n_layer=draw(st.integers(1, 96)),
        n_head=heads,
        d_model=heads * head_dim,
        d_ff=draw(st.none() | st.integers(1, 16_384)),
        dropout=draw(st.floats(0.0, 1.0, exclude_max=True)),
        bias=draw(st.booleans()),
        tie_weights=draw(st.booleans()),
        pad_id=None if pad is None else pad % vocab,
        position=position,
        norm=draw(st.sampled_from(NORMS)),
        mlp=draw(st.sampled_from(MLPS)),
        n_kv_head=draw(
            st.none() | st.sampled_from([k for k in range(1, heads + 1) if heads % k == 0])
        ),
        qk_norm=draw(st.booleans()),
        zero_init_output=draw(st.booleans()),
        attn_dropout=draw(st.floats(0.0, 1.0, exclude_max=True)),
        max_position=max_position,
        gradient_checkpointing=draw(st.booleans()),
    )


@given(config=_valid_configs())
def test_config_round_trips_through_json(config: GPTConfig) -> None:
    d = config.to_dict()
    assert set(d) == {field.name for field in dataclasses.fields(GPTConfig)}
    assert GPTConfig.from_dict(json.loads(json.dumps(d))) == config


def test_config_from_dict_rejects_unknown_keys_naming_them_and_the_valid_keys() -> None:
    with pytest.raises(ValueError, match=r"unknown keys \['layers', 'n_layers'\]") as info:
        GPTConfig.from_dict({"vocab_size": 65, "n_layers": 2, "layers": 3})
    assert "valid keys are ['vocab_size', 'block_size', 'n_layer'" in str(info.value)


def test_config_from_dict_requires_vocab_size() -> None:
    with pytest.raises(ValueError, match="'vocab_size' is missing"):
        GPTConfig.from_dict({"n_layer": 2})


def test_config_new_fields_default_to_plain_gpt2() -> None:
    config = GPTConfig(vocab_size=65)
    assert (config.position, config.norm, config.mlp) == ("learned", "layernorm", "gelu")
    assert (config.n_kv_head, config.kv_heads, config.qk_norm) == (None, 4, False)
    assert (config.zero_init_output, config.attn_dropout, config.gradient_checkpointing) == (
        False,
        0.0,
        False,
    )
    assert (config.max_position, config.context_limit) == (None, 256)


def test_config_dict_saved_before_the_variants_existed_still_loads() -> None:
    old = {
        "vocab_size": 65, "block_size": 32, "n_layer": 2, "n_head": 2, "d_model": 16,
        "d_ff": None, "dropout": 0.1, "bias": True, "tie_weights": True, "pad_id": 0,
    }  # fmt: skip
    config = GPTConfig.from_dict(old)
    assert config == GPTConfig(**old)
    assert config.to_dict() == {**GPTConfig(vocab_size=65).to_dict(), **old}
    # The trainer and checkpoints rely on these names; the defaults must not rename a tensor.
    names = set(GPT(config).state_dict())
    for i in range(2):
        assert {
            f"blocks.{i}.{part}.weight"
            for part in ("norm_1", "attn.qkv", "attn.proj", "norm_2", "mlp.fc", "mlp.proj")
        } <= names
    assert {"tok_emb.weight", "pos_emb.weight", "norm_f.weight", "head.weight"} <= names
    assert len(names) == 5 + 2 * 12  # + norm_f.bias; 6 weights and 6 biases per block


@pytest.mark.parametrize(
    ("mlp", "d_ff", "expected"),
    [("gelu", None, 64), ("relu2", None, 64), ("swiglu", None, 42)]
    + [(mlp, 40, 40) for mlp in MLPS],
)
def test_ff_dim_defaults_per_mlp(mlp: str, d_ff: int | None, expected: int) -> None:
    # swiglu: 2/3 of 4d = 8 * 16 // 3 = 42, so 3 matrices hold about as many weights as 2 of 4d.
    assert GPTConfig(vocab_size=65, d_model=16, n_head=2, mlp=mlp, d_ff=d_ff).ff_dim == expected


@pytest.mark.parametrize("position", POSITIONS)
def test_context_limit_is_max_position_only_for_relative_positions(position: str) -> None:
    config = GPTConfig(vocab_size=65, block_size=32, position=position)
    assert config.context_limit == 32
    if position in RELATIVE:
        assert dataclasses.replace(config, max_position=100).context_limit == 100
    else:
        with pytest.raises(
            ValueError, match=f"max_position must be None for position '{position}'"
        ):
            dataclasses.replace(config, max_position=100)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"position": "rope", "d_model": 6, "n_head": 2}, r"head_dim \(d_model / n_head = 3\)"),
        ({"position": "rope", "max_position": 100}, r"int >= block_size \(256\), got 100"),
        ({"position": "alibi", "max_position": True}, r"int >= block_size \(256\), got True"),
        ({"n_head": 4, "n_kv_head": 3}, r"n_kv_head must be a divisor of n_head \(4\), got 3"),
        ({"n_head": 2, "n_kv_head": 4}, r"n_kv_head must be a divisor of n_head \(2\), got 4"),
    ],
)
def test_config_rejects_inconsistent_fields_naming_them(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GPTConfig(vocab_size=65, **fields)


# ---------------------------------------------------------------------------------------------
# GPT forward: shapes, loss


@pytest.mark.parametrize(("B", "T"), [(1, 1), (3, BLOCK), (2, 5)])
def test_logits_shape_and_dtype(B: int, T: int) -> None:
    out = _model()(_ids(B, T))
    assert out.logits.shape == (B, T, VOCAB)
    assert out.logits.dtype == torch.float32
    assert out.loss is None


def test_logits_follow_autocast_dtype() -> None:
    ids = _ids(2, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _model()(ids, ids)
    assert out.logits.dtype == torch.bfloat16
    assert out.loss is not None and torch.isfinite(out.loss)


class _AttentionDtypes(TorchDispatchMode):
    """Records the dtype of the query reaching every CPU attention kernel, forward and backward."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.__name__
        if "scaled_dot_product" in name or name.startswith(("bmm", "baddbmm", "_softmax")):
            self.seen.append((name, args[0].dtype))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("padded", [False, True])
def test_cpu_attention_runs_in_float32_under_bf16_autocast(position: str, padded: bool) -> None:
    # torch 2.13's CPU attention kernels are several times slower in bfloat16 (bench_train.py
    # --precision bf16), so the kit computes attention in float32 there, forward and backward.
    model = _model(position=position).train()
    ids = _ids(2, BLOCK)
    mask = torch.ones(2, BLOCK, dtype=torch.bool)
    if padded:
        mask[0, :3] = False  # left padding sends attention through an explicit mask
    with _AttentionDtypes() as recorded, torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, ids, attention_mask=mask if padded else None)
    assert out.logits.dtype == torch.bfloat16  # the matmuls around attention stay low precision
    assert out.loss is not None
    with recorded:
        out.loss.backward()
    kernels = [name for name, _ in recorded.seen]
    assert any("backward" in name for name in kernels), kernels
    assert {dtype for _, dtype in recorded.seen} == {torch.float32}, recorded.seen
    # Same function as float32: the gap is bf16 rounding of the matmuls, not a different model.
    reference = _model(position=position)(ids, attention_mask=mask if padded else None).logits
    assert_close(out.logits.float()[mask], reference[mask], atol=0.1, rtol=0.05)


def test_cached_decoding_under_bf16_autocast_reads_the_float32_cache_as_it_is() -> None:
    model = _model(position="rope").eval()
    ids = _ids(1, BLOCK)
    with _AttentionDtypes() as recorded, torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            full = model(ids).logits
            cache = model.new_cache(1)
            steps = [model(ids[:, t : t + 1], cache=cache).logits for t in range(BLOCK)]
    assert cache.keys[0].dtype == torch.float32  # the cache keeps the model's dtype
    assert {dtype for _, dtype in recorded.seen} == {torch.float32}
    assert_close(torch.cat(steps, 1).float(), full.float(), atol=0.05, rtol=0.05)


def test_cpu_attention_of_a_bf16_model_runs_in_float32_and_returns_bf16() -> None:
    model = _model(position="rope").to(torch.bfloat16).eval()
    ids = _ids(1, BLOCK)
    with _AttentionDtypes() as recorded, torch.no_grad():
        logits = model(ids).logits
        cache = model.new_cache(1)
        stepped = torch.cat([model(ids[:, t : t + 1], cache=cache).logits for t in range(BLOCK)], 1)
    assert logits.dtype == stepped.dtype == torch.bfloat16
    assert recorded.seen and {dtype for _, dtype in recorded.seen} == {torch.float32}
    assert_close(stepped.float(), logits.float(), atol=0.05, rtol=0.05)


@pytest.mark.parametrize("pad_id", [0, 3, None])
def test_loss_equals_float64_cross_entropy_over_non_pad_targets(pad_id: int | None) -> None:
    model = _model(pad_id=pad_id)
    ids, targets = _ids(3, BLOCK, seed=1), _ids(3, BLOCK, seed=2)
    pad_value = 0 if pad_id is None else pad_id
    targets[:, ::3] = pad_value  # a third of the targets are the pad id
    out = model(ids, targets)

    # Independent reference: -log softmax at the target, averaged over the kept positions.
    log_probs = torch.log_softmax(out.logits.double(), dim=-1)  # (B, T, V)
    nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    keep = torch.ones_like(targets, dtype=torch.bool) if pad_id is None else targets != pad_id
    assert out.loss is not None
    assert_close(out.loss.double(), nll[keep].mean(), rtol=1e-6, atol=1e-7)
    if pad_id is not None:  # the pad positions really change the mean when counted
        assert not torch.isclose(nll[keep].mean(), nll.mean())


def test_pad_targets_do_not_reach_the_loss() -> None:
    model = _model()
    ids = _ids(2, BLOCK, seed=3)
    targets = _ids(2, BLOCK, seed=4).clamp(min=1)
    targets[:, -1] = 0  # the last position of each row is padding

    # Only the last position sees the last token (causality), so changing that token changes
    # only logits whose target is pad: the loss must not move.
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % VOCAB
    loss, loss_changed = model(ids, targets).loss, model(changed, targets).loss
    assert loss is not None and loss_changed is not None
    assert torch.equal(loss, loss_changed)
    # Control: with a real target there, the same change does move the loss.
    targets[:, -1] = 1
    assert not torch.equal(model(ids, targets).loss, model(changed, targets).loss)


def test_pad_positions_get_zero_gradient() -> None:
    model = _model()
    ids, targets = _ids(2, BLOCK, seed=5), _ids(2, BLOCK, seed=6).clamp(min=1)
    targets[0, 2:5] = 0
    out = model(ids, targets)
    out.logits.retain_grad()
    assert out.loss is not None
    out.loss.backward()
    grad = out.logits.grad
    assert grad is not None
    pad = targets == 0
    assert torch.all(grad[pad] == 0)
    assert torch.all(grad[~pad].abs().sum(-1) > 0)


def test_all_pad_targets_give_nan_loss_like_cross_entropy() -> None:
    ids = _ids(2, 4)
    out = _model()(ids, torch.zeros_like(ids))
    assert out.loss is not None and torch.isnan(out.loss)
    expected = F.cross_entropy(
        out.logits.view(8, VOCAB), torch.zeros(8, dtype=torch.long), ignore_index=0
    )
    assert torch.isnan(expected)


def test_sequence_longer_than_block_size_raises() -> None:
    model = _model()
    assert model(_ids(1, BLOCK)).logits.shape[1] == BLOCK
    with pytest.raises(ValueError, match=f"sequence length {BLOCK + 1} exceeds block_size {BLOCK}"):
        model(_ids(1, BLOCK + 1))


def test_bad_input_shapes_raise() -> None:
    model = _model()
    with pytest.raises(ValueError, match=r"ids must be 2-D \(B, T\), got shape \(5,\)"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"targets must have the shape of ids \(2, 4\)"):
        model(_ids(2, 4), _ids(2, 3))


# ---------------------------------------------------------------------------------------------
# GPT: causality and attention against a reference


@functools.cache
def _causality_model() -> GPT:
    return _model(seed=7).eval()


@given(data=st.data())
def test_changing_a_future_token_leaves_earlier_logits_unchanged(data: st.DataObject) -> None:
    T = data.draw(st.integers(1, BLOCK), label="T")
    ids = torch.tensor([data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=T, max_size=T))])
    p = data.draw(st.integers(0, T - 1), label="changed position")
    shift = data.draw(st.integers(1, VOCAB - 1), label="shift")
    changed = ids.clone()
    changed[0, p] = (changed[0, p] + shift) % VOCAB

    model = _causality_model()
    with torch.no_grad():
        before, after = model(ids).logits, model(changed).logits  # (1, T, V)
    assert_close(after[:, :p], before[:, :p], rtol=0, atol=1e-6)
    assert not torch.allclose(after[:, p], before[:, p])


def _linear64(x: torch.Tensor, layer: torch.nn.Module) -> torch.Tensor:
    """x @ W.T + b in float64."""
    y = x @ layer.weight.double().T
    return y if layer.bias is None else y + layer.bias.double()


def _norm64(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    """LayerNorm or RMSNorm over the last dim, in float64 (eps 1e-5: nn.LayerNorm's default)."""
    if isinstance(norm, nn.RMSNorm):  # x / sqrt(mean(x^2) + eps) * gain
        return x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5) * norm.weight.double()
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased variance, as LayerNorm uses
    y = (x - mean) / torch.sqrt(var + 1e-5) * norm.weight.double()
    return y if norm.bias is None else y + norm.bias.double()


def _rope64(x: torch.Tensor, start: int = 0) -> torch.Tensor:
    """RoPE as complex multiplication: (x_i + j x_{i+D/2}) * exp(j p 10000^(-2i/D)), float64."""
    T, D = x.shape[-2], x.shape[-1]
    i = torch.arange(D // 2, dtype=torch.float64)
    p = torch.arange(start, start + T, dtype=torch.float64)
    rotation = torch.polar(
        torch.ones(T, D // 2, dtype=torch.float64), p[:, None] * 1e4 ** (-2 * i / D)
    )
    z = torch.complex(x[..., : D // 2], x[..., D // 2 :]) * rotation  # (..., T, D/2)
    return torch.cat([z.real, z.imag], dim=-1)


# ALiBi slopes written out from Press et al. 2022, sec. 3 (8 heads: 1/2, 1/4, ..., 1/256) and
# their rule for 6 heads: the 4-head slopes, then every other 8-head slope.
ALIBI_SLOPES = {
    1: [2**-8],
    2: [2**-4, 2**-8],
    4: [2**-2, 2**-4, 2**-6, 2**-8],
    6: [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3],
    8: [2.0**-k for k in range(1, 9)],
}


def _attention64(
    x: torch.Tensor, attn: torch.nn.Module, config: GPTConfig, start: int = 0
) -> torch.Tensor:
    """Causal attention one query head at a time, with an explicit masked softmax, in float64.

    `x` holds positions start .. start + T - 1 and attends to itself only (no cache).
    """
    B, T, C = x.shape
    H, K, D = config.n_head, config.kv_heads, config.head_dim
    qkv = _linear64(x, attn.qkv)  # (B, T, (H + 2K) D)
    q, k, v = qkv[..., : H * D], qkv[..., H * D : (H + K) * D], qkv[..., (H + K) * D :]
    future = torch.ones(T, T).triu(diagonal=1).bool()  # True where key index > query index
    distance = (torch.arange(T)[None, :] - torch.arange(T)[:, None]).double()  # key - query
    heads = []
    for h in range(H):
        g = h // (H // K)  # the key/value head this query head shares
        qh, kh = q[..., h * D : (h + 1) * D], k[..., g * D : (g + 1) * D]  # (B, T, D)
        if config.qk_norm:
            qh, kh = _norm64(qh, attn.q_norm), _norm64(kh, attn.k_norm)
        if config.position == "rope":
            qh, kh = _rope64(qh, start), _rope64(kh, start)
        scores = qh @ kh.transpose(1, 2) / math.sqrt(D)  # (B, T, T)
        if config.position == "alibi":
            scores = scores + ALIBI_SLOPES[H][h] * distance
        weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        heads.append(weights @ v[..., g * D : (g + 1) * D])  # (B, T, D)
    return _linear64(torch.cat(heads, dim=-1), attn.proj)  # (B, T, C)


def _mlp64(x: torch.Tensor, mlp: torch.nn.Module, kind: str) -> torch.Tensor:
    h = _linear64(x, mlp.fc)  # (B, T, F), or (B, T, 2F) for swiglu
    if kind == "gelu":
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU
    elif kind == "relu2":
        h = torch.where(h > 0, h * h, 0.0)
    else:  # swiglu: first half gates, second half carries the value; silu(a) = a sigmoid(a)
        gate, up = h.chunk(2, dim=-1)
        h = gate / (1 + torch.exp(-gate)) * up
    return _linear64(h, mlp.proj)


def _sinusoids64(T: int, C: int) -> torch.Tensor:
    """Vaswani et al. 2017, sec. 3.5, entry by entry."""
    table = torch.zeros(T, C, dtype=torch.float64)
    for p in range(T):
        for i in range(C):
            angle = p / 10000 ** (2 * (i // 2) / C)
            table[p, i] = math.sin(angle) if i % 2 == 0 else math.cos(angle)
    return table


def _gpt64(model: GPT, ids: torch.Tensor) -> torch.Tensor:
    """An independent float64 forward pass of `model` (eval mode, any variant), pre-norm blocks."""
    config = model.config
    T = ids.shape[1]
    x = model.tok_emb.weight.double()[ids]  # (B, T, C)
    if config.position == "learned":
        x = x + model.pos_emb.weight.double()[:T]
    elif config.position == "sinusoidal":
        x = x + _sinusoids64(T, config.d_model)
    for block in model.blocks:
        x = x + _attention64(_norm64(x, block.norm_1), block.attn, config)
        x = x + _mlp64(_norm64(x, block.norm_2), block.mlp, config.mlp)
    return _linear64(_norm64(x, model.norm_f), model.head)  # (B, T, V)


def _scramble(module: torch.nn.Module, seed: int, std: float = 0.3) -> None:
    """Give every parameter N(0, std) values so that no path is near zero or near uniform."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("T", [1, 5, BLOCK])
def test_sdpa_attention_equals_float64_masked_softmax(T: int, bias: bool) -> None:
    model = _model(n_head=4, d_model=32, bias=bias)
    attn = model.blocks[0].attn
    _scramble(attn, seed=T)
    x = torch.randn(2, T, 32, generator=torch.Generator().manual_seed(0))  # (B, T, C)
    with torch.no_grad():
        got = attn(x)  # (B, T, C)
        expected = _attention64(x.double(), attn, model.config)
    assert expected.abs().mean() > 0.1  # the comparison is not between near-zero tensors
    assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T", [1, 2, 9, 64, 128])
def test_matmul_attention_equals_float64_sdpa_with_gradients(T: int) -> None:
    generator = torch.Generator().manual_seed(T)
    q, k, v = (
        torch.randn(2, 3, T, 8, dtype=torch.float64, generator=generator).requires_grad_()
        for _ in range(3)
    )  # (B, H, T, D) each
    upstream = torch.randn(2, 3, T, 8, dtype=torch.float64, generator=generator)
    got = _matmul_attention(q, k, v)
    got_grads = torch.autograd.grad(got, (q, k, v), upstream)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    expected_grads = torch.autograd.grad(expected, (q, k, v), upstream)
    assert_close(got, expected, rtol=1e-12, atol=1e-12)
    for name, got_grad, expected_grad in zip("qkv", got_grads, expected_grads, strict=True):
        if T > 1 or name == "v":  # one key: its weight is 1 whatever q and k are
            assert expected_grad.abs().mean() > 0.01  # not a comparison of near-zero gradients
        assert_close(got_grad, expected_grad, rtol=1e-12, atol=1e-12)
    # Causal: the first query sees only the first value.
    assert_close(got[:, :, 0], v[:, :, 0], rtol=1e-12, atol=1e-12)


def _matmul_attention_calls(
    monkeypatch: pytest.MonkeyPatch, model: GPT, ids: torch.Tensor, **forward: object
) -> int:
    """How many times one forward + backward of `model` computed attention as matmuls."""
    calls = []

    def spy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        calls.append(q.shape)
        return _matmul_attention(q, k, v)

    monkeypatch.setattr(attention_module, "_matmul_attention", spy)
    out = model(ids, ids, **forward)
    if out.loss is not None and out.loss.requires_grad:
        out.loss.backward()
    return len(calls)


@pytest.mark.parametrize(
    ("overrides", "T", "expected"),
    [
        ({}, BLOCK, 2),  # float32 CPU training on a short sequence: every layer
        ({"position": "rope", "qk_norm": True}, BLOCK, 2),
        ({"block_size": 160}, 128, 2),
        ({"block_size": 160}, 129, 0),  # longer: the fused kernel
        ({"n_kv_head": 1}, BLOCK, 0),  # grouped-query attention stays in SDPA
        ({"attn_dropout": 0.1}, BLOCK, 0),  # SDPA applies the attention dropout
        ({"position": "alibi"}, BLOCK, 0),  # a bias mask
    ],
)
def test_training_picks_matmul_attention_on_short_unmasked_sequences(
    monkeypatch: pytest.MonkeyPatch, overrides: dict[str, object], T: int, expected: int
) -> None:
    model = _model(n_layer=2, **overrides).train()
    assert _matmul_attention_calls(monkeypatch, model, _ids(2, T)) == expected


def test_matmul_attention_only_where_it_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model(n_layer=2).train()
    ids = _ids(2, BLOCK)
    with torch.no_grad():  # inference: SDPA's forward alone is the faster one
        assert _matmul_attention_calls(monkeypatch, model, ids) == 0
    padded = torch.ones(2, BLOCK, dtype=torch.bool)
    padded[0, :2] = False  # an explicit key mask
    assert _matmul_attention_calls(monkeypatch, model, ids, attention_mask=padded) == 0
    with torch.autocast("cpu", dtype=torch.bfloat16):  # q is upcast, autocast off inside
        assert _matmul_attention_calls(monkeypatch, model, ids) == 2


def test_training_step_gradients_do_not_depend_on_the_attention_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    grads = []
    for limit in (0, BLOCK):  # 0: SDPA everywhere; BLOCK: matmuls for every sequence here
        monkeypatch.setattr(attention_module, "_MATMUL_ATTENTION_MAX_T", limit)
        model = _model(d_ff=24, position="rope").train()
        _scramble(model, seed=3, std=0.1)
        loss = model(_ids(3, BLOCK, seed=4), _ids(3, BLOCK, seed=5)).loss
        assert loss is not None
        loss.backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        assert grad is not None and grads[1][name] is not None
        assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("tie_weights", [True, False])
def test_gpt_equals_float64_reference_forward(bias: bool, tie_weights: bool) -> None:
    model = _model(bias=bias, tie_weights=tie_weights, d_ff=24).eval()
    _scramble(model, seed=1)
    ids = _ids(3, BLOCK, seed=2)
    with torch.no_grad():
        got = model(ids).logits  # (B, T, V)
        expected = _gpt64(model, ids)
    assert expected.std() > 0.1  # logits spread out: the comparison is not between constants
    assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


def test_overfits_one_small_batch() -> None:
    model = _model(vocab_size=16, block_size=16, pad_id=None)
    ids = torch.randint(0, 16, (4, 17), generator=torch.Generator().manual_seed(0))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    first = None
    for _ in range(300):
        loss = model(inputs, targets).loss
        assert loss is not None
        first = loss.item() if first is None else first
        if loss.item() < 0.05:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first is not None and first > 2.0  # started near log(16) = 2.77
    assert loss.item() < 0.05


# ---------------------------------------------------------------------------------------------
# GPT: weight tying, parameter count, init


def test_weight_tying_shares_the_embedding_tensor() -> None:
    tied, untied = _model(), _model(tie_weights=False)
    assert tied.head.weight is tied.tok_emb.weight
    assert untied.head.weight is not untied.tok_emb.weight
    assert not torch.equal(untied.head.weight, untied.tok_emb.weight)


def test_num_parameters_gpt2_formula() -> None:
    # Default d_ff = 4d with biases: each block has 12 d^2 weights (qkv 3d^2, out d^2, MLP 8d^2)
    # and 13 d biases/gains (qkv 3d, out d, fc 4d, down d, two LayerNorms 4d).
    V, T, L, d = VOCAB, BLOCK, 3, 24
    model = _model(n_layer=L, d_model=d, n_head=3)
    expected = 12 * L * d**2 + 13 * L * d + V * d + T * d + 2 * d  # 2d: final LayerNorm
    assert model.num_parameters() == expected
    assert model.num_parameters(exclude_embeddings=True) == expected - T * d


@pytest.mark.parametrize("tie_weights", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("d_ff", [None, 40])
def test_num_parameters_counts_shared_head_once(
    tie_weights: bool, bias: bool, d_ff: int | None
) -> None:
    V, T, L, d = VOCAB, BLOCK, 2, 16
    f = 4 * d if d_ff is None else d_ff
    norm = 2 * d if bias else d  # LayerNorm gain (+ bias)
    block = 3 * d * d + d * d + d * f + f * d + 2 * norm
    if bias:
        block += 3 * d + d + f + d
    expected = V * d + T * d + L * block + norm + (0 if tie_weights else V * d)
    model = _model(tie_weights=tie_weights, bias=bias, d_ff=d_ff)
    assert model.num_parameters() == expected
    assert model.num_parameters(exclude_embeddings=True) == expected - T * d


def test_init_matches_gpt2_statistics() -> None:
    L = 8
    model = _model(n_layer=L, d_model=128, n_head=4, vocab_size=512)
    residual = torch.cat(
        [
            torch.cat([b.attn.proj.weight.flatten(), b.mlp.proj.weight.flatten()])
            for b in model.blocks
        ]
    )
    other = torch.cat(
        [torch.cat([b.attn.qkv.weight.flatten(), b.mlp.fc.weight.flatten()]) for b in model.blocks]
    )
    assert residual.std().item() == pytest.approx(0.02 / math.sqrt(2 * L), rel=0.03)
    assert other.std().item() == pytest.approx(0.02, rel=0.03)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert model.pos_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert abs(residual.mean().item()) < 1e-4
    biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
    assert biases and all(torch.all(p == 0) for p in biases)
    assert torch.all(model.norm_f.weight == 1)


# ---------------------------------------------------------------------------------------------
# GPT: dropout


def test_dropout_only_acts_in_train_mode() -> None:
    ids = _ids(2, BLOCK)
    model = _model(dropout=0.5)
    model.eval()
    assert torch.equal(model(ids).logits, model(ids).logits)
    model.train()
    assert not torch.equal(model(ids).logits, model(ids).logits)
    no_dropout = _model(dropout=0.0).train()
    assert torch.equal(no_dropout(ids).logits, no_dropout(ids).logits)


@pytest.mark.parametrize("where", ["embeddings", "attention output", "mlp output"])
def test_dropout_hits_embeddings_and_each_residual_branch(where: str) -> None:
    model = _model(dropout=0.5, d_model=64, n_head=4).train()
    seen: list[torch.Tensor] = []
    block = model.blocks[0]
    if where == "embeddings":
        block.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    else:
        branch = block.attn if where == "attention output" else block.mlp
        branch.register_forward_hook(lambda module, args, out: seen.append(out))
    ids = _ids(4, BLOCK)
    model(ids)
    model.eval()
    model(ids)
    train, evaluated = seen
    dropped = train == 0
    assert dropped.float().mean().item() == pytest.approx(0.5, abs=0.05)
    assert not torch.any(evaluated == 0)
    if where == "embeddings":  # kept entries are scaled by 1 / (1 - p)
        assert_close(train[~dropped], 2 * evaluated[~dropped])


# ---------------------------------------------------------------------------------------------
# Variants: every (position, norm, mlp) with grouped-query attention and qk-norm on top


def _variant(position: str, norm: str, mlp: str, **overrides: object) -> GPT:
    return _model(n_head=4, position=position, norm=norm, mlp=mlp, **overrides)


@pytest.mark.parametrize(("n_kv_head", "qk_norm"), ATTENTION)
@pytest.mark.parametrize(("position", "norm", "mlp"), VARIANTS)
def test_variant_equals_float64_reference_forward(
    position: str, norm: str, mlp: str, n_kv_head: int | None, qk_norm: bool
) -> None:
    model = _variant(position, norm, mlp, n_kv_head=n_kv_head, qk_norm=qk_norm).eval()
    _scramble(model, seed=1)
    ids = _ids(2, BLOCK, seed=2)
    with torch.no_grad():
        got = model(ids).logits  # (B, T, V)
        expected = _gpt64(model, ids)
    assert expected.std() > 0.1
    assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("position", "norm", "mlp"), VARIANTS)
def test_variant_shapes_and_loss_ignore_pad(position: str, norm: str, mlp: str) -> None:
    model = _variant(position, norm, mlp, n_kv_head=2)
    ids, targets = _ids(3, BLOCK, seed=1), _ids(3, BLOCK, seed=2)
    targets[:, ::3] = 0  # pad_id 0
    out = model(ids, targets)
    assert out.logits.shape == (3, BLOCK, VOCAB) and out.logits.dtype == torch.float32
    log_probs = torch.log_softmax(out.logits.double(), dim=-1)  # (B, T, V)
    nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    assert out.loss is not None
    assert_close(out.loss.double(), nll[targets != 0].mean(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("n_kv_head", "qk_norm"), ATTENTION)
@pytest.mark.parametrize("position", POSITIONS)
def test_variant_is_causal(position: str, n_kv_head: int | None, qk_norm: bool) -> None:
    model = _variant(position, "rmsnorm", "swiglu", n_kv_head=n_kv_head, qk_norm=qk_norm).eval()
    _scramble(model, seed=3)
    ids = _ids(2, BLOCK, seed=4)
    for p in (0, 3, BLOCK - 1):
        changed = ids.clone()
        changed[:, p] = (changed[:, p] + 1) % VOCAB
        with torch.no_grad():
            before, after = model(ids).logits, model(changed).logits  # (B, T, V)
        assert_close(after[:, :p], before[:, :p], rtol=0, atol=1e-6)
        assert not torch.allclose(after[:, p], before[:, p])


@pytest.mark.parametrize("T", [1, 5, BLOCK])
@pytest.mark.parametrize(("n_kv_head", "qk_norm"), ATTENTION)
@pytest.mark.parametrize("position", POSITIONS)
def test_sdpa_variant_attention_equals_float64_reference(
    position: str, n_kv_head: int | None, qk_norm: bool, T: int
) -> None:
    model = _model(n_head=4, d_model=32, position=position, n_kv_head=n_kv_head, qk_norm=qk_norm)
    attn = model.blocks[0].attn
    _scramble(attn, seed=T)
    x = torch.randn(2, T, 32, generator=torch.Generator().manual_seed(0))  # (B, T, C)
    with torch.no_grad():
        got = attn(x)  # (B, T, C)
        expected = _attention64(x.double(), attn, model.config)
    assert expected.abs().mean() > 0.1
    assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_head", sorted(ALIBI_SLOPES))
def test_alibi_slopes_match_the_paper(n_head: int) -> None:
    assert alibi_slopes(n_head).tolist() == ALIBI_SLOPES[n_head]


@given(shift=st.integers(0, 5000), seed=st.integers(0, 2**16))
def test_rope_scores_depend_only_on_the_offset(shift: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 1, 1, 3, 8, generator=generator)  # 2 x (B, H, T, D)
    positions = torch.tensor([0, 4, 9])
    scores = apply_rope(q, positions) @ apply_rope(k, positions).transpose(-1, -2)  # (1, 1, 3, 3)
    moved = apply_rope(q, positions + shift) @ apply_rope(k, positions + shift).transpose(-1, -2)
    # float32 angles p * theta lose about p * 6e-8 rad, hence the tolerance at large shifts.
    assert_close(moved, scores, rtol=0, atol=1e-5 + 2e-6 * shift)


@given(start=st.integers(0, 3000), seed=st.integers(0, 2**16), half=st.integers(1, 8))
def test_rotate_by_rope_tables_equals_a_complex_rotation(start: int, seed: int, half: int) -> None:
    x = torch.randn(2, 3, 5, 2 * half, generator=torch.Generator().manual_seed(seed))
    tables = rope_tables(torch.arange(start, start + 5), 2 * half)
    assert tables.cos.shape == tables.sin.shape == (5, 2 * half)
    assert tables.cos.dtype == tables.sin.dtype == torch.float32
    # float32 angles p * theta lose about p * 6e-8 rad, hence the tolerance at large positions.
    expected = _rope64(x.double(), start)
    assert_close(rotate(x, tables).double(), expected, rtol=0, atol=1e-5 + 1e-6 * start)
    assert torch.equal(apply_rope(x, torch.arange(start, start + 5)), rotate(x, tables))


def test_rope_tables_per_row_broadcast_over_heads() -> None:
    positions = torch.tensor([[0, 0, 1], [3, 4, 5]])  # (B, T): a left-padded row, a plain row
    tables = rope_tables(positions, 4)
    assert tables.cos.shape == tables.sin.shape == (2, 1, 3, 4)
    plain = rope_tables(torch.tensor([3, 4, 5]), 4)
    assert torch.equal(tables.cos[1, 0], plain.cos) and torch.equal(tables.sin[1, 0], plain.sin)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_gpt_computes_rope_tables_once_per_forward(
    qk_norm: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformer_kit.models import attention as attention_module
    from transformer_kit.models import gpt as gpt_module

    model = _model(position="rope", n_layer=3, n_head=4, d_model=32, qk_norm=qk_norm).eval()
    ids = _ids(2, 6, seed=1)
    with torch.no_grad():
        expected = model(ids).logits  # (B, T, V)
    calls: list[str] = []

    def counted(where: str):  # noqa: ANN202 - a test double for rope_tables
        def tables(positions: torch.Tensor, head_dim: int) -> RopeTables:
            calls.append(where)
            return rope_tables(positions, head_dim)

        return tables

    monkeypatch.setattr(gpt_module, "rope_tables", counted("gpt"))
    monkeypatch.setattr(attention_module, "rope_tables", counted("attention"))
    with torch.no_grad():
        cache = model.new_cache(2)
        got = model(ids, cache=cache).logits
        step = model(_ids(2, 1, seed=2), cache=cache).logits
    assert calls == ["gpt", "gpt"]  # once per forward, for all three layers
    assert_close(got, expected, rtol=0, atol=1e-6)
    assert step.shape == (2, 1, VOCAB)
    # Attention on its own, without tables, computes them from its slots.
    attn, x = model.blocks[0].attn, torch.randn(2, 6, 32)
    with torch.no_grad():
        alone = attn(x)
        given_tables = attn(x, rope=rope_tables(torch.arange(6), model.config.head_dim))
    assert calls[-1] == "attention" and torch.equal(alone, given_tables)


@pytest.mark.parametrize("n", [1, 1024, 65_536, 65_537])
def test_gelu_equals_the_erf_formula_with_and_without_autograd(n: int) -> None:
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 5
    expected = 0.5 * x.double() * (1 + torch.erf(x.double() / math.sqrt(2)))
    act = GELU()
    with torch.no_grad():
        assert_close(act(x).double(), expected, rtol=0, atol=2e-6)
    x.requires_grad_(True)
    y = act(x)
    assert y.grad_fn is not None
    assert_close(y.detach().double(), expected, rtol=0, atol=2e-6)
    (grad,) = torch.autograd.grad(y.sum(), x)
    # d/dx x Phi(x) = Phi(x) + x phi(x)
    xd = x.detach().double()
    slope = 0.5 * (1 + torch.erf(xd / math.sqrt(2))) + xd * torch.exp(-xd * xd / 2) / math.sqrt(
        2 * math.pi
    )
    assert_close(grad.double(), slope, rtol=0, atol=2e-6)
    assert act.approximate == "none" and isinstance(act, nn.GELU)


def test_sinusoidal_positions_match_the_formula() -> None:
    model = _model(position="sinusoidal", d_model=10, n_head=2)
    assert model.pos_emb is not None and not list(model.pos_emb.parameters())
    table = model.pos_emb(torch.arange(BLOCK))  # (T, C)
    assert_close(table.double(), _sinusoids64(BLOCK, 10), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [
        {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 1, "qk_norm": True},
        {"position": "alibi", "mlp": "relu2", "zero_init_output": True, "bias": False},
    ],
    ids=["rope-rmsnorm-swiglu-mqa-qknorm", "alibi-relu2-zeroinit"],
)
def test_variant_overfits_one_small_batch(overrides: dict) -> None:
    model = _model(vocab_size=16, block_size=16, pad_id=None, n_head=4, d_model=32, **overrides)
    ids = torch.randint(0, 16, (4, 17), generator=torch.Generator().manual_seed(0))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(200):
        loss = model(inputs, targets).loss
        assert loss is not None
        losses.append(loss.item())
        if losses[-1] < 0.05:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[0] > 2.0  # started near log(16) = 2.77
    assert losses[-1] < 0.05


# ---------------------------------------------------------------------------------------------
# Init options, qk-norm, attention dropout, gradient checkpointing


def test_zero_init_output_starts_blocks_as_identity_and_still_learns() -> None:
    model = _model(zero_init_output=True)
    for block in model.blocks:
        assert torch.all(block.attn.proj.weight == 0) and torch.all(block.mlp.proj.weight == 0)
        assert block.attn.qkv.weight.std() > 0.01  # the rest keeps the N(0, 0.02) init
    ids = _ids(2, BLOCK)
    out = model(ids, ids)
    embedded = model.tok_emb(ids) + model.pos_emb(torch.arange(BLOCK))  # (B, T, C)
    assert_close(out.logits, model.head(model.norm_f(embedded)))  # every block is the identity
    assert out.loss is not None
    out.loss.backward()
    for block in model.blocks:
        assert block.attn.proj.weight.grad.abs().sum() > 0
        assert block.mlp.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("norm", NORMS)
def test_qk_norm_makes_attention_blind_to_query_and_key_scale(norm: str) -> None:
    outputs = {}
    for qk_norm in (True, False):
        model = _model(n_head=4, d_model=32, bias=False, norm=norm, qk_norm=qk_norm).eval()
        attn = model.blocks[0].attn
        _scramble(attn, seed=0)
        x = torch.randn(2, BLOCK, 32, generator=torch.Generator().manual_seed(1))  # (B, T, C)
        with torch.no_grad():
            before = attn(x)
            attn.qkv.weight[:32] *= 7.0  # every query row
            attn.qkv.weight[32:64] *= 0.2  # every key row
            outputs[qk_norm] = (before, attn(x))
    assert_close(*outputs[True], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(*outputs[False], atol=1e-2)  # control: without qk-norm it matters


def test_attention_dropout_is_separate_from_residual_dropout() -> None:
    model = _model(attn_dropout=0.5, dropout=0.0)
    assert model.drop.p == 0.0 and model.blocks[0].attn.dropout.p == 0.0
    ids = _ids(2, BLOCK)
    model.train()
    assert not torch.equal(model(ids).logits, model(ids).logits)
    model.eval()
    assert torch.equal(model(ids).logits, model(ids).logits)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_gradient_checkpointing_keeps_outputs_and_gradients(dropout: float) -> None:
    models = {
        flag: _model(
            seed=1, dropout=dropout, attn_dropout=dropout, position="rope",
            gradient_checkpointing=flag,
        ).train()
        for flag in (False, True)
    }  # fmt: skip
    calls = []
    for block in models[True].blocks:  # the block's own hook would miss the recompute, which
        # stops as soon as the saved tensors are rebuilt (non-reentrant checkpoint)
        block.attn.register_forward_hook(lambda module, args, out: calls.append(1))
    ids, targets = _ids(2, BLOCK, seed=1), _ids(2, BLOCK, seed=2)
    results = {}
    for flag, model in models.items():
        torch.manual_seed(5)  # the same dropout masks in both runs
        out = model(ids, targets)
        assert out.loss is not None
        out.loss.backward()
        results[flag] = (out.logits, {n: p.grad for n, p in model.named_parameters()})
    assert_close(results[True][0], results[False][0], rtol=0, atol=1e-6)
    for name, grad in results[False][1].items():
        assert_close(results[True][1][name], grad, rtol=1e-5, atol=1e-7)
    assert len(calls) == 2 * 2  # each of 2 attentions ran twice: forward, then in backward


# ---------------------------------------------------------------------------------------------
# Position-feature hook


class _BarPosition(nn.Module):
    """A domain feature: the position within a bar of 4 tokens, as a learned embedding."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.table = nn.Embedding(4, d_model)
        self.seen: list[list[int]] = []

    def forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.seen.append(positions.tolist())
        return self.table(positions % 4).expand(ids.shape[0], -1, -1)  # (B, T, C)


def test_position_features_are_added_trained_and_saved() -> None:
    plain = _model(seed=0)
    hooked = GPT(plain.config, position_features=_BarPosition(plain.config.d_model))
    missing = hooked.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["position_features.table.weight"]
    ids, targets = _ids(2, BLOCK, seed=1), _ids(2, BLOCK, seed=2)
    features = hooked.position_features
    assert isinstance(features, _BarPosition)
    assert features.table.weight.std().item() == pytest.approx(0.02, rel=0.5)  # the model's init
    with torch.no_grad():
        features.table.weight.zero_()
    assert_close(hooked(ids).logits, plain(ids).logits)  # zero features: same model
    with torch.no_grad():
        features.table.weight.normal_(generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(hooked(ids).logits, plain(ids).logits)

    optimizer = torch.optim.SGD(hooked.parameters(), lr=0.1)
    before = features.table.weight.detach().clone()
    loss = hooked(ids, targets).loss
    assert loss is not None
    loss.backward()
    assert features.table.weight.grad is not None and features.table.weight.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(features.table.weight, before)
    d = plain.config.d_model
    assert hooked.num_parameters() == plain.num_parameters() + 4 * d
    assert hooked.num_parameters(exclude_embeddings=True) == plain.num_parameters(
        exclude_embeddings=True
    )
    assert hooked.parameter_breakdown()["embeddings"] == (
        plain.parameter_breakdown()["embeddings"] + 4 * d
    )


def test_position_features_see_absolute_positions_with_a_cache() -> None:
    model = GPT(_config(position="rope"), position_features=_BarPosition(16)).eval()
    features = model.position_features
    assert isinstance(features, _BarPosition)
    ids = _ids(1, 6, seed=3)
    cache = model.new_cache(1)
    with torch.no_grad():
        full = model(ids).logits
        steps = [model(ids[:, :3], cache=cache).logits]
        steps += [model(ids[:, t : t + 1], cache=cache).logits for t in range(3, 6)]
    assert features.seen == [[0, 1, 2, 3, 4, 5], [0, 1, 2], [3], [4], [5]]
    assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-5)


# Bar positions: ids 0 pad, 1 start, 2 bar, 3 a note, 4-6 advance the clock by 0.25 / 0.5 / 1.0.
BAR_TIMES = [0.0, 0.0, 0.0, 0.0, 0.25, 0.5, 1.0] + [0.0] * (VOCAB - 7)


def _bar_positions_by_hand(row: list[int], *, max_steps: int = 16) -> list[int]:
    """The positions by a plain loop; max_steps + 1 before the first reset (unknown)."""
    clock, last_reset, out = 0, None, []
    for token in row:
        if token in (1, 2):
            last_reset = clock
        out.append(max_steps + 1 if last_reset is None else min(clock - last_reset, max_steps))
        clock += round(BAR_TIMES[token] / 0.25)
    return out


def test_bar_positions_by_hand() -> None:
    features = BarPositionFeatures(8, time_values=BAR_TIMES, bar_id=2, start_id=1)
    #         note  +1.0 note +0.5 bar note +0.25 note
    row = [3, 6, 3, 5, 2, 3, 4, 3]
    assert features.bar_positions(torch.tensor([row])).tolist() == [[17, 17, 17, 17, 0, 0, 0, 1]]
    row = [1, 3, 6, 3, 6, 3, 6, 3, 6, 3, 6, 3]  # start, then five whole beats past 4/4
    assert features.bar_positions(torch.tensor([row])).tolist() == [
        [0, 0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 16]
    ]


@given(st.lists(st.integers(0, 6), min_size=1, max_size=40), st.integers(1, 20))
def test_bar_positions_match_a_loop(row: list[int], max_steps: int) -> None:
    features = BarPositionFeatures(
        4, time_values=BAR_TIMES, bar_id=2, start_id=1, max_steps=max_steps
    )
    expected = _bar_positions_by_hand(row, max_steps=max_steps)
    assert features.bar_positions(torch.tensor([row])).tolist() == [expected]


def test_bar_position_features_with_a_cache_equal_a_full_recompute() -> None:
    torch.manual_seed(0)
    features = BarPositionFeatures(16, time_values=BAR_TIMES, bar_id=2, start_id=1)
    model = GPT(_config(position="rope", max_position=64), position_features=features).eval()
    gen = torch.Generator().manual_seed(4)
    ids = torch.cat(
        [torch.ones(2, 1, dtype=torch.long), torch.randint(2, 7, (2, 29), generator=gen)], 1
    )
    cache = model.new_cache(2)
    with torch.no_grad():
        full = model(ids).logits
        steps = [model(ids[:, :5], cache=cache).logits]
        steps += [model(ids[:, t : t + 1], cache=cache).logits for t in range(5, 30)]
    assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-4)
    # The history matters: the same token gets another feature without the tokens before it.
    assert not torch.allclose(
        features(ids[:, 10:11], torch.tensor([10])), features(ids[:, :11], torch.tensor([10]))
    )


def test_bar_position_features_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="bar_id must be an id in"):
        BarPositionFeatures(8, time_values=[0.0, 1.0], bar_id=5)
    with pytest.raises(ValueError, match="time_values"):
        BarPositionFeatures(8, time_values=[0.0, -1.0], bar_id=0)
    with pytest.raises(ValueError, match="resolution"):
        BarPositionFeatures(8, time_values=[0.0, 1.0], bar_id=0, resolution=0)
    with pytest.raises(ValueError, match="d_model"):
        BarPositionFeatures(0, time_values=[0.0, 1.0], bar_id=0)


# ---------------------------------------------------------------------------------------------
# Parameter breakdown and FLOPs


@pytest.mark.parametrize(("n_kv_head", "qk_norm"), ATTENTION)
@pytest.mark.parametrize(("position", "norm", "mlp"), VARIANTS)
def test_parameter_breakdown_sums_to_num_parameters(
    position: str, norm: str, mlp: str, n_kv_head: int | None, qk_norm: bool
) -> None:
    for tie in (True, False):
        model = _variant(position, norm, mlp, n_kv_head=n_kv_head, qk_norm=qk_norm, tie_weights=tie)
        parts = model.parameter_breakdown()
        assert sorted(parts) == ["attention", "embeddings", "head", "mlp", "norms"]
        assert sum(parts.values()) == model.num_parameters()
        assert (parts["head"] == 0) == tie


def test_parameter_breakdown_by_hand() -> None:
    V, T, L, d = VOCAB, BLOCK, 2, 16
    plain = _model()  # n_head 2, gelu, layernorm, biases, tied, learned positions
    assert plain.parameter_breakdown() == {
        "embeddings": V * d + T * d,
        "attention": L * (3 * d * d + 3 * d + d * d + d),
        "mlp": L * (d * 4 * d + 4 * d + 4 * d * d + d),
        "norms": L * 2 * 2 * d + 2 * d,
        "head": 0,
    }
    # rope, rmsnorm, swiglu (F = 8 * 16 // 3 = 42), one kv head (D = 8), qk-norm, untied, no bias.
    F_, D = 42, 8
    model = _model(
        position="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=1, qk_norm=True,
        tie_weights=False, bias=False,
    )  # fmt: skip
    assert model.parameter_breakdown() == {
        "embeddings": V * d,
        "attention": L * (d * (2 + 2 * 1) * D + d * d),
        "mlp": L * (d * 2 * F_ + F_ * d),
        "norms": L * (d + d + D + D) + d,
        "head": V * d,
    }


@pytest.mark.parametrize("tie_weights", [True, False])
def test_flops_per_token_by_hand(tie_weights: bool) -> None:
    V, T, L, d = VOCAB, BLOCK, 2, 16
    # 6 N + 12 L d T (PaLM app. B), N = matmul weights: qkv 3d^2, proj d^2, MLP 8d^2, head Vd.
    model = _model(tie_weights=tie_weights)
    assert model.flops_per_token() == 6 * (L * 12 * d * d + V * d) + 12 * L * d * T
    # GQA with 1 kv head of D = 8 and H = 2: qkv is d (2 + 2) D; swiglu F = 42 has 3 matrices.
    gqa = _model(tie_weights=tie_weights, n_kv_head=1, mlp="swiglu")
    N = L * (d * 4 * 8 + d * d + 3 * d * 42) + V * d
    assert gqa.flops_per_token() == 6 * N + 12 * L * d * T


# ---------------------------------------------------------------------------------------------
# KV cache


def _limits(position: str, length: int) -> dict[str, int]:
    """A context of `length`: block_size for absolute positions, max_position for relative."""
    if position in RELATIVE:
        return {"block_size": BLOCK, "max_position": length}
    return {"block_size": length}


CACHE_EXTRAS = {
    "mha": {},
    "gqa-rmsnorm-swiglu-qknorm": {
        "n_kv_head": 2,
        "norm": "rmsnorm",
        "mlp": "swiglu",
        "qk_norm": True,
    },
}


@pytest.mark.parametrize("extra", CACHE_EXTRAS.values(), ids=CACHE_EXTRAS.keys())
@pytest.mark.parametrize("position", POSITIONS)
def test_cached_decoding_equals_full_recompute(position: str, extra: dict) -> None:
    prompt, steps = 10, 200
    model = _model(
        seed=3, n_head=4, position=position, **_limits(position, prompt + steps), **extra
    )
    model.eval()
    _scramble(model, seed=4, std=0.2)
    ids = _ids(2, prompt + steps, seed=5)
    cache = model.new_cache(2)
    with torch.no_grad():
        full = model(ids).logits  # (B, T, V); causal, so row t is the recompute of ids[:, :t+1]
        logits = [model(ids[:, :prompt], cache=cache).logits]
        for t in range(prompt, prompt + steps):  # one position per forward
            logits.append(model(ids[:, t : t + 1], cache=cache).logits)
            assert logits[-1].shape == (2, 1, VOCAB) and cache.length == t + 1
    assert full.std() > 0.1
    assert (torch.cat(logits, dim=1) - full).abs().max() < 1e-4


@pytest.mark.parametrize("chunks", [[12], [5, 7], [1, 4, 1, 6]])
@pytest.mark.parametrize("position", POSITIONS)
def test_prefill_in_chunks_equals_full_forward(position: str, chunks: list[int]) -> None:
    model = _model(seed=1, n_head=4, n_kv_head=2, position=position, **_limits(position, 12))
    model.eval()
    _scramble(model, seed=2)
    ids = _ids(3, 12, seed=3)
    cache = model.new_cache(3)
    pieces, start = [], 0
    with torch.no_grad():
        full = model(ids).logits
        for size in chunks:
            pieces.append(model(ids[:, start : start + size], cache=cache).logits)
            start += size
    assert cache.length == 12
    assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


def test_new_cache_matches_model_dtype_device_and_kv_heads() -> None:
    model = _model(n_head=4, n_kv_head=2, position="alibi", max_position=40).double()
    cache = model.new_cache(3)
    assert (cache.n_layer, cache.batch_size, cache.max_length, cache.length) == (2, 3, 40, 0)
    for keys, values in zip(cache.keys, cache.values, strict=True):
        assert keys.shape == values.shape == (3, 2, 40, 4)  # (B, K, L, D): 2 kv heads stored
        assert keys.dtype == torch.float64 and keys.device == model.head.weight.device
    assert model.new_cache(1, 7).max_length == 7
    with torch.no_grad():
        out = model(_ids(3, 5), cache=cache)
    assert out.logits.dtype == torch.float64 and cache.length == 5


@pytest.mark.parametrize("position", ["learned", "sinusoidal"])
def test_absolute_positions_stop_at_block_size(position: str) -> None:
    model = _model(position=position).eval()
    cache = model.new_cache(1)
    assert cache.max_length == BLOCK
    with torch.no_grad():
        model(_ids(1, BLOCK), cache=cache)
        with pytest.raises(
            ValueError, match=rf"position {BLOCK} \+ 1 new tokens = {BLOCK + 1} exceeds "
            rf"block_size {BLOCK}; position '{position}' cannot extrapolate"
        ):  # fmt: skip
            model(_ids(1, 1), cache=cache)
    assert cache.length == BLOCK  # a refused call leaves the cache as it was
    with pytest.raises(ValueError, match=rf"max_length must be None or an int in \[1, {BLOCK}\]"):
        model.new_cache(1, BLOCK + 1)


@pytest.mark.parametrize("position", RELATIVE)
def test_relative_positions_run_up_to_max_position(position: str) -> None:
    model = _model(position=position, max_position=20).eval()
    cache = model.new_cache(1)
    assert cache.max_length == 20
    with torch.no_grad():
        assert model(_ids(1, 20)).logits.shape == (1, 20, VOCAB)  # past block_size 8
        model(_ids(1, 19), cache=cache)
        model(_ids(1, 1), cache=cache)
        with pytest.raises(
            ValueError, match=r"position 20 \+ 1 new tokens = 21 exceeds max_position 20"
        ):
            model(_ids(1, 1), cache=cache)
        with pytest.raises(ValueError, match="sequence length 21 exceeds max_position 20"):
            model(_ids(1, 21))
        with pytest.raises(ValueError, match=f"sequence length {BLOCK + 1} exceeds block_size"):
            _model(position=position)(_ids(1, BLOCK + 1))  # no max_position: block_size
        small = model.new_cache(1, 4)
        with pytest.raises(ValueError, match="= 5 exceeds the cache's max_length 4"):
            model(_ids(1, 5), cache=small)


def test_cache_must_fit_the_batch_and_the_model() -> None:
    model = _model().eval()
    with pytest.raises(ValueError, match=r"batch size 2.*ids have batch size 1"):
        model(_ids(1, 3), cache=model.new_cache(2))
    with pytest.raises(ValueError, match=r"cache has 3 layers.*n_layer 2"):
        model(
            _ids(1, 3),
            cache=KVCache(n_layer=3, batch_size=1, n_kv_head=2, head_dim=8, max_length=8),
        )
    with pytest.raises(ValueError, match="KVCache: max_length must be a positive int, got 0"):
        KVCache(n_layer=1, batch_size=1, n_kv_head=1, head_dim=1, max_length=0)


def test_cache_crop_reset_and_reorder() -> None:
    model = _model(seed=2, position="rope").eval()
    _scramble(model, seed=3)
    prompts, tail = _ids(2, 5, seed=1), _ids(2, 2, seed=2)
    cache = model.new_cache(2)
    with torch.no_grad():
        model(prompts, cache=cache)
        first = model(tail, cache=cache).logits
        cache.crop(5)  # forget the tail, decode something else, then the tail again
        model(_ids(2, 3, seed=9), cache=cache)
        cache.crop(5)
        assert_close(model(tail, cache=cache).logits, first, rtol=0, atol=1e-6)
        with pytest.raises(ValueError, match=r"length must be an int in \[0, 7\], got 8"):
            cache.crop(8)

        cache.reset()
        assert cache.length == 0
        model(prompts, cache=cache)
        cache.reorder(torch.tensor([1, 1, 0]))  # follow beams: row 1 twice, then row 0
        assert cache.batch_size == 3
        got = model(tail[[1, 1, 0]], cache=cache).logits
    assert_close(got, first[[1, 1, 0]], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Attention mask (left padding)


def _left_padded(lengths: list[int], pad: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rows of the given lengths, left-padded with `pad`: ids and mask, each (B, T)."""
    T = max(lengths)
    ids = torch.full((len(lengths), T), pad, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.bool)
    for row, length in enumerate(lengths):
        ids[row, T - length :] = _ids(1, length, seed=seed + row)[0]
        mask[row, T - length :] = True
    return ids, mask


@pytest.mark.parametrize("position", POSITIONS)
def test_left_padded_logits_equal_each_unpadded_row(position: str) -> None:
    model = _model(seed=5, n_head=4, n_kv_head=2, position=position).eval()
    _scramble(model, seed=6)
    lengths = [BLOCK, 3, 1, 6]
    ids, mask = _left_padded(lengths, pad=7, seed=10)
    with torch.no_grad():
        padded = model(ids, attention_mask=mask.int()).logits  # 0/1 masks work too
        # Cached: a prefill of 5 columns, then one column per call, the mask growing along.
        cache = model.new_cache(len(lengths))
        steps = [model(ids[:, :5], cache=cache, attention_mask=mask[:, :5]).logits]
        for t in range(5, BLOCK):
            steps.append(model(ids[:, t : t + 1], cache=cache, attention_mask=mask[:, : t + 1]))
        cached = torch.cat([steps[0], *(s.logits for s in steps[1:])], dim=1)
        for row, length in enumerate(lengths):
            alone = model(ids[row : row + 1, BLOCK - length :]).logits[0]  # (length, V)
            assert (padded[row, BLOCK - length :] - alone).abs().max() < 1e-5
            assert (cached[row, BLOCK - length :] - alone).abs().max() < 1e-5
    assert padded.std() > 0.1


@pytest.mark.parametrize("position", POSITIONS)
def test_all_true_mask_is_the_unmasked_forward(position: str) -> None:
    model = _model(seed=1, position=position).eval()
    ids = _ids(2, 6, seed=4)
    with torch.no_grad():
        assert torch.equal(
            model(ids, attention_mask=torch.ones(2, 6, dtype=torch.bool)).logits,
            model(ids).logits,
        )


def test_attention_mask_with_gradient_checkpointing_matches_plain_training() -> None:
    ids, mask = _left_padded([6, 4], pad=0, seed=3)
    targets = torch.roll(ids, -1, dims=1)
    losses, grads = [], []
    for recompute in (False, True):
        model = _model(seed=2, position="rope", gradient_checkpointing=recompute).train()
        loss = model(ids, targets, attention_mask=mask).loss
        assert loss is not None
        loss.backward()
        losses.append(loss.detach())
        grads.append(model.tok_emb.weight.grad)
    assert_close(losses[1], losses[0], rtol=0, atol=1e-6)
    assert_close(grads[1], grads[0], rtol=0, atol=1e-6)


def test_attention_mask_must_cover_every_slot_seen() -> None:
    model = _model().eval()
    cache = model.new_cache(2)
    with torch.no_grad():
        model(_ids(2, 3), cache=cache)
        with pytest.raises(ValueError, match=r"attention_mask must have shape .* \(2, 4\), got"):
            model(_ids(2, 1), cache=cache, attention_mask=torch.ones(2, 1, dtype=torch.bool))
        with pytest.raises(ValueError, match=r"attention_mask must have shape .* \(2, 3\), got"):
            model(_ids(2, 3), attention_mask=torch.ones(3, 3))


# ---------------------------------------------------------------------------------------------
# Float16 Linear weights for CPU decoding

needs_fbgemm = pytest.mark.skipif(
    "fbgemm" not in torch.backends.quantized.supported_engines, reason="fbgemm is x86-only"
)


@needs_fbgemm
@pytest.mark.parametrize("tie_weights", [True, False])
@pytest.mark.parametrize("mlp", MLPS)
def test_float16_linears_equal_float32_linears_with_rounded_weights(
    mlp: str, tie_weights: bool
) -> None:
    model = _model(seed=6, n_head=4, n_kv_head=2, mlp=mlp, tie_weights=tie_weights)
    _scramble(model, seed=7)
    saved = {name: value.clone() for name, value in model.state_dict().items()}
    packed = pack_float16_linears(model)
    # The same model with every converted weight rounded to float16 and computed in float32.
    rounded = copy.deepcopy(model).eval()
    converted = [
        name for name, module in packed.named_modules() if isinstance(module, Float16Linear)
    ]
    with torch.no_grad():
        for name in converted:
            weight = rounded.get_submodule(name).weight
            weight.copy_(weight.half().float())
    ids = _ids(2, BLOCK, seed=8)
    cache = packed.new_cache(2)
    with torch.no_grad():
        expected = rounded(ids).logits
        full = packed(ids).logits
        steps = [packed(ids[:, :3], cache=cache).logits]
        steps += [packed(ids[:, t : t + 1], cache=cache).logits for t in range(3, BLOCK)]
        float32 = model(ids).logits
    assert_close(full, expected, rtol=1e-4, atol=1e-4)
    assert_close(torch.cat(steps, dim=1), expected, rtol=1e-4, atol=1e-4)
    assert 0 < (full - float32).abs().max() < 0.05  # rounded, but only just
    n_linear = 4 * model.config.n_layer + (0 if tie_weights else 1)
    assert len(converted) == n_linear and not packed.training
    assert isinstance(packed.head, Float16Linear) != tie_weights
    if tie_weights:
        assert packed.head.weight is packed.tok_emb.weight
    assert all(torch.equal(value, saved[name]) for name, value in model.state_dict().items())


@needs_fbgemm
def test_float16_linear_refuses_weights_it_cannot_pack() -> None:
    with pytest.raises(ValueError, match=r"float32 CPU weight, got torch.float64 on cpu"):
        Float16Linear(nn.Linear(4, 2).double())
    with pytest.raises(ValueError, match=r"float32 CPU weight, got torch.float64"):
        pack_float16_linears(nn.Sequential(nn.Linear(4, 2)).double())


def _rounded_linear(seed: int, bias: bool) -> tuple[nn.Linear, nn.Linear]:
    """A float32 Linear and its copy with the weight rounded to float16 (the reference)."""
    torch.manual_seed(seed)
    linear = nn.Linear(24, 40, bias=bias)
    rounded = copy.deepcopy(linear)
    with torch.no_grad():
        rounded.weight.copy_(rounded.weight.half().float())
    return linear, rounded


@needs_fbgemm
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows", [1, 3, layers_module._ROWS_KERNEL_MAX, 17, 64])
@pytest.mark.parametrize("bias", [True, False])
def test_float16_linear_picks_its_kernel_by_rows_and_threads(
    rows: int, threads: int, bias: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    linear, rounded = _rounded_linear(seed=rows, bias=bias)
    calls = []
    rows_kernel = torch.fbgemm_linear_fp16_weight

    def spy(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape)
        return rows_kernel(x, weight, bias)

    packed = Float16Linear(linear)
    monkeypatch.setattr(torch, "fbgemm_linear_fp16_weight", spy)
    x = torch.randn(1, rows, 24)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            out = packed(x)
    finally:
        torch.set_num_threads(before)
    assert out.shape == (1, rows, 40)
    with torch.no_grad():
        assert_close(out, rounded(x), rtol=1e-5, atol=1e-5)
    few = rows <= layers_module._ROWS_KERNEL_MAX or threads == 1
    assert calls == ([(rows, 24)] if few else [])


@needs_fbgemm
@pytest.mark.parametrize(
    "make_x",
    [
        lambda: torch.randn(0, 24),  # no rows
        lambda: torch.randn(24),  # one row, 1-D
        lambda: torch.randn(24, 5).t(),  # non-contiguous rows
        lambda: torch.randn(3, 48)[:, ::2],  # strided columns
        lambda: torch.randn(1, 24).expand(4, 24),  # one row repeated, stride 0
    ],
)
def test_float16_linear_takes_any_float32_layout(make_x: object) -> None:
    linear, rounded = _rounded_linear(seed=13, bias=True)
    packed = Float16Linear(linear)
    x = make_x()  # type: ignore[operator]
    with torch.no_grad():
        out = packed(x)
        assert out.shape == (*x.shape[:-1], 40)
        assert_close(out, rounded(x), rtol=1e-5, atol=1e-5)


@needs_fbgemm
def test_float16_linear_compiles_and_traces_through_the_threaded_kernel(tmp_path: Path) -> None:
    # The few-rows kernel has no fake-tensor form and its handle cannot be serialised, so
    # compiled and traced code must take the other kernel.
    linear, rounded = _rounded_linear(seed=14, bias=True)
    packed = Float16Linear(linear)
    x = torch.randn(1, 24)
    with torch.no_grad():
        compiled = torch.compile(packed, backend="eager")
        assert_close(compiled(x), rounded(x), rtol=1e-5, atol=1e-5)
        with warnings.catch_warnings():  # torch 2.13 deprecates torch.jit, which still works
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(packed, x)
            torch.jit.save(traced, tmp_path / "traced.pt")
            loaded = torch.jit.load(tmp_path / "traced.pt")
        assert_close(loaded(x), rounded(x), rtol=1e-5, atol=1e-5)


@needs_fbgemm
@pytest.mark.parametrize("bias", [True, False])
def test_float16_linear_survives_copy_pickle_and_the_original_being_freed(bias: bool) -> None:
    linear, rounded = _rounded_linear(seed=11, bias=bias)
    packed = Float16Linear(linear)
    copied = copy.deepcopy(packed)
    buffer = io.BytesIO()
    torch.save(packed, buffer)
    # The few-rows packing is a handle that torch refuses once its bytes are copied, and one
    # that outlived the original would point at freed memory: each copy must pack its own.
    assert packed._rows is not None and copied._rows is not None
    assert not torch.equal(copied._rows[0], packed._rows[0])
    del packed
    gc.collect()
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x = torch.randn(2, 24)
    with torch.no_grad():
        for module in (copied, loaded):
            assert module._rows is not None
            assert_close(module(x), rounded(x), rtol=1e-5, atol=1e-5)
            assert_close(module(x.repeat(40, 1)), rounded(x.repeat(40, 1)), rtol=1e-5, atol=1e-5)


@needs_fbgemm
def test_float16_linear_without_the_rows_kernel_uses_the_threaded_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(layers_module, "_HAS_ROWS_KERNEL", False)
    linear, rounded = _rounded_linear(seed=12, bias=True)
    packed = Float16Linear(linear)
    assert packed._rows is None
    x = torch.randn(1, 24)
    with torch.no_grad():
        assert_close(packed(x), rounded(x), rtol=1e-5, atol=1e-5)


@needs_fbgemm
def test_float16_linear_emits_no_deprecation_warning() -> None:
    # torch warns once per process, so only a fresh process shows whether the warning escapes.
    code = (
        "import torch\n"
        "from transformer_kit.models import Float16Linear\n"
        "with torch.no_grad():\n"
        "    Float16Linear(torch.nn.Linear(4, 2))(torch.ones(1, 4))\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "deprecated" not in done.stderr


# ---------------------------------------------------------------------------------------------
# Documentation


@pytest.mark.parametrize(
    "name", ["config", "positional", "layers", "attention", "cache", "gpt", "features"]
)
def test_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(f"transformer_kit.models.{name}"))
    assert result.attempted > 0 and result.failed == 0

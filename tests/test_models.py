"""Tests for transformer_kit.models: config validation and round trips, GPT vs references."""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.testing import assert_close

from transformer_kit.models import GPT, GPTConfig

# Shapes: B batch, T time, C d_model, H heads, D head dim, V vocab.

VOCAB = 11
BLOCK = 8


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


_valid_configs = st.builds(
    lambda vocab, block, layers, heads, head_dim, d_ff, dropout, bias, tie, pad: GPTConfig(
        vocab_size=vocab,
        block_size=block,
        n_layer=layers,
        n_head=heads,
        d_model=heads * head_dim,
        d_ff=d_ff,
        dropout=dropout,
        bias=bias,
        tie_weights=tie,
        pad_id=None if pad is None else pad % vocab,
    ),
    st.integers(1, 100_000),
    st.integers(1, 8192),
    st.integers(1, 96),
    st.integers(1, 64),
    st.integers(1, 256),
    st.none() | st.integers(1, 16_384),
    st.floats(0.0, 1.0, exclude_max=True),
    st.booleans(),
    st.booleans(),
    st.none() | st.integers(0, 100_000),
)


@given(config=_valid_configs)
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


def _layer_norm64(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) * gain + bias over the last dim, in float64."""
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased variance, as LayerNorm uses
    y = (x - mean) / torch.sqrt(var + 1e-5) * norm.weight.double()  # eps: nn.LayerNorm default
    return y if norm.bias is None else y + norm.bias.double()


def _attention64(x: torch.Tensor, attn: torch.nn.Module, n_head: int) -> torch.Tensor:
    """Causal multi-head attention, one head at a time, with an explicit masked softmax."""
    B, T, C = x.shape
    D = C // n_head
    qkv = _linear64(x, attn.qkv)  # (B, T, 3C)
    q, k, v = qkv[..., :C], qkv[..., C : 2 * C], qkv[..., 2 * C :]
    future = torch.ones(T, T).triu(diagonal=1).bool()  # True where key index > query index
    heads = []
    for h in range(n_head):
        cols = slice(h * D, (h + 1) * D)
        scores = q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(D)  # (B, T, T)
        weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        heads.append(weights @ v[..., cols])  # (B, T, D)
    return _linear64(torch.cat(heads, dim=-1), attn.proj)  # (B, T, C)


def _gpt64(model: GPT, ids: torch.Tensor) -> torch.Tensor:
    """An independent float64 forward pass of `model` (eval mode): GPT-2 with pre-norm blocks."""
    config = model.config
    T = ids.shape[1]
    x = model.tok_emb.weight.double()[ids] + model.pos_emb.weight.double()[:T]  # (B, T, C)
    for block in model.blocks:
        x = x + _attention64(_layer_norm64(x, block.norm_1), block.attn, config.n_head)
        h = _linear64(_layer_norm64(x, block.norm_2), block.mlp.fc)  # (B, T, F)
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU
        x = x + _linear64(h, block.mlp.proj)
    return _linear64(_layer_norm64(x, model.norm_f), model.head)  # (B, T, V)


def _scramble(module: torch.nn.Module, seed: int) -> None:
    """Give every parameter N(0, 0.3) values so that no path is near zero or near uniform."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("T", [1, 5, BLOCK])
def test_sdpa_attention_equals_float64_masked_softmax(T: int, bias: bool) -> None:
    model = _model(n_head=4, d_model=32, bias=bias)
    attn = model.blocks[0].attn
    _scramble(attn, seed=T)
    x = torch.randn(2, T, 32, generator=torch.Generator().manual_seed(0))  # (B, T, C)
    with torch.no_grad():
        got = attn(x)  # (B, T, C)
        expected = _attention64(x.double(), attn, n_head=4)
    assert expected.abs().mean() > 0.1  # the comparison is not between near-zero tensors
    assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


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

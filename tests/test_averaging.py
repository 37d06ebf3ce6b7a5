"""EMA: the average against a float64 hand computation, swapping in and out, state round trips."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from transformer_kit import averaging
from transformer_kit.averaging import EMA, inference_weights
from transformer_kit.models import GPT, GPTConfig


def scalar_model(value: float) -> nn.Module:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(value)
    return model


def hand_average(values: list[float], decay: float, warmup: bool) -> float:
    """a_1 = p_1, a_t = d_t a_{t-1} + (1 - d_t) p_t, d_t = min(decay, t / (t + 9)) with warmup."""
    average = values[0]
    for t, value in enumerate(values[1:], start=2):
        d = min(decay, t / (t + 9)) if warmup else decay
        average = d * average + (1 - d) * value
    return average


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(-10, 10, width=32), min_size=1, max_size=40),
    decay=st.floats(0.5, 0.999),
    warmup=st.booleans(),
)
def test_average_matches_a_float64_hand_computation(values, decay, warmup):
    model = scalar_model(values[0])
    ema = EMA(model, decay=decay, warmup=warmup)
    for value in values[1:]:
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
    assert ema.updates == len(values)
    expected = hand_average(values, decay, warmup)
    assert ema.module.weight.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_warmup_decay_follows_the_rule_and_caps_at_decay():
    ema = EMA(scalar_model(0.0), decay=0.99)
    assert ema.decay_at(2) == pytest.approx(2 / 11)
    assert ema.decay_at(91) == pytest.approx(91 / 100)
    assert ema.decay_at(10_000) == 0.99
    assert EMA(scalar_model(0.0), decay=0.99, warmup=False).decay_at(2) == 0.99


def test_applied_swaps_the_average_in_and_restores_even_on_error():
    model = scalar_model(0.0)
    ema = EMA(model, decay=0.5, warmup=False)
    with torch.no_grad():
        model.weight.fill_(4.0)
    ema.update(model)  # average 2.0, model 4.0
    with ema.applied(model) as inside:
        assert inside is model and model.weight.item() == 2.0
    assert model.weight.item() == 4.0
    with pytest.raises(RuntimeError, match="boom"), ema.applied(model):
        raise RuntimeError("boom")
    assert model.weight.item() == 4.0
    assert ema.module.weight.item() == 2.0  # the average is not touched by swapping


def test_gpt_average_keeps_tied_weights_and_does_not_track_gradients():
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, d_model=16))
    ema = EMA(model, decay=0.9)
    assert ema.module.head.weight is ema.module.tok_emb.weight
    assert not any(p.requires_grad for p in ema.module.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = torch.randint(20, (2, 8))
    for _ in range(3):
        optimizer.zero_grad()
        model(ids, ids)[1].backward()
        optimizer.step()
        ema.update(model)
    own = dict(model.named_parameters())
    for name, averaged in ema.module.named_parameters():
        assert not torch.equal(averaged, own[name]), name  # it lags behind the trained weights


def test_state_dict_round_trip_continues_exactly():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    steps = [torch.randn(2, 3) for _ in range(6)]
    for delta in steps[:3]:
        with torch.no_grad():
            model.weight.add_(delta)
        ema.update(model)
    state = ema.state_dict()
    copy = EMA(nn.Linear(3, 2), decay=0.9)
    copy.load_state_dict(state)
    assert copy.updates == ema.updates == 4
    for delta in steps[3:]:
        with torch.no_grad():
            model.weight.add_(delta)
        ema.update(model)
        copy.update(model)
    for a, b in zip(ema.module.parameters(), copy.module.parameters(), strict=True):
        assert torch.equal(a, b)


def test_reset_restarts_from_the_model_and_copy_to_writes_it():
    model = scalar_model(1.0)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(5.0)
    ema.update(model)
    ema.reset(model)
    assert ema.updates == 1 and ema.module.weight.item() == 5.0
    other = scalar_model(0.0)
    ema.copy_to(other)
    assert other.weight.item() == 5.0


@pytest.mark.parametrize("decay", [0, 1, 1.5, -0.1])
def test_decay_outside_the_open_interval_is_refused_with_its_value(decay):
    with pytest.raises(ValueError, match=rf"decay must be in \(0, 1\), got {decay!r}"):
        EMA(scalar_model(0.0), decay=decay)


@pytest.mark.parametrize("decay", [True, "0.9", None])
def test_decay_that_is_no_number_is_a_type_error(decay):
    with pytest.raises(TypeError, match=rf"decay must be a real number in \(0, 1\), got {decay!r}"):
        EMA(scalar_model(0.0), decay=decay)


def test_numpy_decay_is_accepted():
    assert EMA(scalar_model(0.0), decay=np.float32(0.5)).decay == 0.5


def test_a_different_model_is_refused_and_left_untouched():
    ema = EMA(scalar_model(3.0), decay=0.9)
    other = nn.Linear(2, 2)
    before = other.weight.detach().clone()
    with pytest.raises(ValueError, match=r"copy_to: the model's parameters \(2 tensors\)"):
        ema.copy_to(other)
    assert torch.equal(other.weight, before)
    with pytest.raises(ValueError, match=r"update: the model's parameters \(2 tensors\)"):
        ema.update(other)
    assert ema.updates == 1 and ema.module.weight.item() == 3.0


def test_low_precision_weights_are_averaged_in_float32():
    model = scalar_model(1.0).to(torch.bfloat16)
    ema = EMA(model, decay=0.999, warmup=False)
    assert ema.module.weight.dtype == torch.float32
    with torch.no_grad():
        model.weight.fill_(1.5)
    for _ in range(500):
        ema.update(model)
    expected = 1.5 - 0.5 * 0.999**500  # 1.197: a bfloat16 average would have stayed at 1.0
    assert ema.module.weight.item() == pytest.approx(expected, rel=1e-4)
    with ema.applied(model):
        assert model.weight.dtype == torch.bfloat16
        assert model.weight.item() == pytest.approx(expected, rel=1e-2)
    assert model.weight.item() == 1.5


def test_load_state_dict_names_what_it_wants():
    ema = EMA(scalar_model(0.0), decay=0.9)
    with pytest.raises(ValueError, match=r"'weights' and 'updates'.*keys \['model'\]"):
        ema.load_state_dict({"model": {}})


def test_inference_weights_prefer_the_average():
    model_weights = {"w": torch.zeros(1)}
    averaged = {"w": torch.ones(1)}
    assert inference_weights({"model": model_weights, "ema": None}) is model_weights
    ema_state = {"weights": averaged, "updates": 3}
    assert inference_weights({"model": model_weights, "ema": ema_state}) is averaged
    with pytest.raises(KeyError, match="neither 'ema' nor 'model'"):
        inference_weights({"step": 3})


def test_docstring_examples_run():
    result = doctest.testmod(averaging)
    assert result.attempted > 0 and result.failed == 0


def test_docs_example_runs(capsys):
    page = Path(__file__).resolve().parents[1] / "docs" / "averaging.md"
    code = re.search(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)
    assert code is not None
    exec(compile(code.group(1), str(page), "exec"), {})
    assert capsys.readouterr().out.strip() == "21 True"

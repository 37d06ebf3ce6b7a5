"""Tests for transformer_kit.schedules: hand-computed values, laws, LambdaLR, lr_finder."""

from __future__ import annotations

import copy
import math
from functools import partial
from typing import NamedTuple

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from transformer_kit.schedules import (
    LRFinderResult,
    constant_with_warmup,
    inverse_sqrt,
    lambda_lr,
    lr_finder,
    warmup_cosine,
    warmup_linear,
)

DECAYING = [warmup_cosine, warmup_linear]
WARMUP_ONLY = [constant_with_warmup, inverse_sqrt]

steps = st.integers(0, 100_000)
warmups = st.integers(0, 500)
min_ratios = st.floats(0.0, 1.0)


# --- example: hand-computed values -------------------------------------------------------------


@pytest.mark.parametrize(
    "fn, step, kwargs, expected",
    [
        (warmup_cosine, 0, {"warmup_steps": 10, "total_steps": 100}, 0.0),
        (warmup_cosine, 5, {"warmup_steps": 10, "total_steps": 100}, 0.5),
        (warmup_cosine, 10, {"warmup_steps": 10, "total_steps": 100}, 1.0),
        (warmup_cosine, 55, {"warmup_steps": 10, "total_steps": 100}, 0.5),
        (warmup_cosine, 100, {"warmup_steps": 10, "total_steps": 100}, 0.0),
        (warmup_cosine, 55, {"warmup_steps": 10, "total_steps": 100, "min_ratio": 0.1}, 0.55),
        (warmup_cosine, 500, {"warmup_steps": 10, "total_steps": 100, "min_ratio": 0.1}, 0.1),
        (warmup_cosine, 0, {"warmup_steps": 0, "total_steps": 100}, 1.0),
        (warmup_cosine, 25, {"warmup_steps": 0, "total_steps": 100}, 0.5 + math.sqrt(2) / 4),
        (warmup_cosine, 9, {"warmup_steps": 10, "total_steps": 10, "min_ratio": 0.3}, 0.9),
        (warmup_cosine, 10, {"warmup_steps": 10, "total_steps": 10, "min_ratio": 0.3}, 0.3),
        (warmup_linear, 28, {"warmup_steps": 10, "total_steps": 100}, 0.8),
        (warmup_linear, 28, {"warmup_steps": 10, "total_steps": 100, "min_ratio": 0.2}, 0.84),
        (warmup_linear, 3, {"warmup_steps": 4, "total_steps": 8}, 0.75),
        (warmup_linear, 8, {"warmup_steps": 4, "total_steps": 8, "min_ratio": 0.5}, 0.5),
        (constant_with_warmup, 3, {"warmup_steps": 4}, 0.75),
        (constant_with_warmup, 4, {"warmup_steps": 4}, 1.0),
        (constant_with_warmup, 10**6, {"warmup_steps": 4}, 1.0),
        (constant_with_warmup, 0, {"warmup_steps": 0}, 1.0),
        (inverse_sqrt, 25, {"warmup_steps": 100}, 0.25),
        (inverse_sqrt, 100, {"warmup_steps": 100}, 1.0),
        (inverse_sqrt, 400, {"warmup_steps": 100}, 0.5),
        (inverse_sqrt, 0, {"warmup_steps": 0}, 1.0),
        (inverse_sqrt, 1, {"warmup_steps": 0}, 1.0),
        (inverse_sqrt, 4, {"warmup_steps": 0}, 0.5),
    ],
)
def test_hand_computed_values(fn, step, kwargs, expected):
    assert fn(step, **kwargs) == pytest.approx(expected, abs=1e-12)


# --- laws --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", DECAYING + WARMUP_ONLY)
@given(warmup=st.integers(1, 300), extra=st.integers(1, 300))
def test_warmup_rises_strictly_from_zero_to_one_at_warmup_steps(fn, warmup, extra):
    kwargs = {"warmup_steps": warmup}
    if fn in DECAYING:
        kwargs["total_steps"] = warmup + extra
    values = [fn(step, **kwargs) for step in range(warmup + 1)]
    assert values[0] == 0.0
    assert values[-1] == 1.0
    assert all(a < b for a, b in zip(values, values[1:], strict=False))
    after = [fn(step, **kwargs) for step in range(warmup, warmup + extra + 5)]
    assert max(after) == 1.0  # the peak is at warmup_steps


@pytest.mark.parametrize("fn", DECAYING)
@given(warmup=warmups, extra=st.integers(1, 10_000), min_ratio=min_ratios, a=steps, b=steps)
def test_decay_never_increases_after_warmup(fn, warmup, extra, min_ratio, a, b):
    total = warmup + extra
    lo, hi = sorted((warmup + a % (total + 50), warmup + b % (total + 50)))
    kwargs = {"warmup_steps": warmup, "total_steps": total, "min_ratio": min_ratio}
    assert fn(lo, **kwargs) >= fn(hi, **kwargs)


@pytest.mark.parametrize("fn", WARMUP_ONLY)
@given(warmup=warmups, a=steps, b=steps)
def test_warmup_only_schedules_never_increase_after_warmup(fn, warmup, a, b):
    lo, hi = sorted((warmup + a, warmup + b))
    assert fn(lo, warmup_steps=warmup) >= fn(hi, warmup_steps=warmup)


@pytest.mark.parametrize("fn", DECAYING)
@given(step=steps, warmup=warmups, extra=st.integers(0, 10_000), min_ratio=min_ratios)
def test_decay_stays_in_range(fn, step, warmup, extra, min_ratio):
    total = max(warmup + extra, 1)  # total_steps=0 is refused
    value = fn(step, warmup_steps=warmup, total_steps=total, min_ratio=min_ratio)
    assert 0.0 <= value <= 1.0
    if step >= warmup:
        assert min_ratio <= value <= 1.0


@pytest.mark.parametrize("fn", WARMUP_ONLY)
@given(step=steps, warmup=warmups)
def test_warmup_only_schedules_stay_in_unit_interval(fn, step, warmup):
    assert 0.0 <= fn(step, warmup_steps=warmup) <= 1.0


@pytest.mark.parametrize("fn", DECAYING)
@given(warmup=warmups, extra=st.integers(0, 10_000), min_ratio=min_ratios, beyond=steps)
def test_decay_reaches_min_ratio_at_total_steps_and_stays(fn, warmup, extra, min_ratio, beyond):
    total = max(warmup + extra, 1)  # total_steps=0 is refused
    kwargs = {"warmup_steps": warmup, "total_steps": total, "min_ratio": min_ratio}
    assert fn(total, **kwargs) == min_ratio
    assert fn(total + beyond, **kwargs) == min_ratio


@given(step=steps, warmup=warmups, extra=st.integers(1, 10_000), min_ratio=min_ratios)
def test_warmup_cosine_matches_squared_cosine_form(step, warmup, extra, min_ratio):
    # Independent form: (1 + cos x) / 2 == cos(x / 2) ** 2.
    total = warmup + extra
    if step < warmup:
        expected = step / warmup
    else:
        progress = min(step - warmup, extra) / extra
        expected = min_ratio + (1 - min_ratio) * math.cos(math.pi * progress / 2) ** 2
    actual = warmup_cosine(step, warmup_steps=warmup, total_steps=total, min_ratio=min_ratio)
    assert actual == pytest.approx(expected, abs=1e-12)


@given(step=steps, warmup=warmups, extra=st.integers(1, 10_000), min_ratio=min_ratios)
def test_warmup_linear_matches_interpolation(step, warmup, extra, min_ratio):
    total = warmup + extra
    if step < warmup:
        expected = step / warmup
    else:
        remaining = max(total - step, 0) / extra
        expected = min_ratio * (1 - remaining) + remaining
    actual = warmup_linear(step, warmup_steps=warmup, total_steps=total, min_ratio=min_ratio)
    assert actual == pytest.approx(expected, abs=1e-12)


@given(step=st.integers(1, 100_000), warmup=warmups)
def test_inverse_sqrt_times_sqrt_step_is_constant_after_warmup(step, warmup):
    step += warmup
    expected = math.sqrt(max(warmup, 1))
    assert inverse_sqrt(step, warmup_steps=warmup) * math.sqrt(step) == pytest.approx(expected)


# --- contract: errors name the parameter -------------------------------------------------------


@pytest.mark.parametrize(
    "call, match",
    [
        (
            partial(warmup_cosine, -1, warmup_steps=0, total_steps=10),
            r"step must be an int >= 0, got -1",
        ),
        (
            partial(warmup_cosine, 0, warmup_steps=-2, total_steps=10),
            r"warmup_cosine: warmup_steps must be an int >= 0, got -2",
        ),
        (
            partial(warmup_cosine, 0, warmup_steps=10, total_steps=5),
            r"total_steps must be >= warmup_steps \(10\), got 5",
        ),
        (
            partial(warmup_cosine, 0, warmup_steps=1, total_steps=5, min_ratio=1.5),
            r"min_ratio must be a number in \[0, 1\], got 1.5",
        ),
        (
            partial(warmup_linear, 0, warmup_steps=1, total_steps=5, min_ratio=-0.1),
            r"warmup_linear: min_ratio must be a number in \[0, 1\], got -0.1",
        ),
        (
            partial(warmup_linear, -3, warmup_steps=1, total_steps=5),
            r"step must be an int >= 0, got -3",
        ),
        (partial(constant_with_warmup, -1, warmup_steps=1), r"step must be an int >= 0, got -1"),
        (partial(constant_with_warmup, 0, warmup_steps=-1), r"warmup_steps must be an int >= 0"),
        (
            partial(inverse_sqrt, 0, warmup_steps=-5),
            r"inverse_sqrt: warmup_steps must be an int >= 0",
        ),
    ],
)
def test_errors_name_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call()


VALID = {
    warmup_cosine: {"warmup_steps": 10, "total_steps": 100, "min_ratio": 0.1},
    warmup_linear: {"warmup_steps": 10, "total_steps": 100, "min_ratio": 0.1},
    constant_with_warmup: {"warmup_steps": 10},
    inverse_sqrt: {"warmup_steps": 10},
}
NOT_INTS = [True, False, 2.5, 10.0, math.nan, math.inf, -math.inf, "10", None]
NOT_RATIOS = [True, False, math.nan, math.inf, "0.1", None]


@pytest.mark.parametrize(
    "fn, param, value",
    [
        pytest.param(fn, param, value, id=f"{fn.__name__}-{param}-{value!r}")
        for fn, kwargs in VALID.items()
        for param in ["step", *kwargs]
        for value in (NOT_RATIOS if param == "min_ratio" else NOT_INTS)
    ],
)
def test_schedules_refuse_bools_non_integers_nan_and_strings(fn, param, value):
    kwargs = dict(VALID[fn])
    step = 50
    if param == "step":
        step = value
    else:
        kwargs[param] = value
    with pytest.raises(ValueError) as error:
        fn(step, **kwargs)
    message = str(error.value)
    allowed = "a number in [0, 1]" if param == "min_ratio" else "an int >= "
    assert message.startswith(f"{fn.__name__}: {param} must be {allowed}"), message
    assert message.endswith(f"got {value!r}"), message


@pytest.mark.parametrize("fn", DECAYING)
def test_decaying_schedules_refuse_total_steps_below_one(fn):
    with pytest.raises(ValueError, match=rf"{fn.__name__}: total_steps must be an int >= 1, got 0"):
        fn(0, warmup_steps=0, total_steps=0)
    assert fn(0, warmup_steps=0, total_steps=1) == 1.0  # the smallest schedule still decays
    assert fn(1, warmup_steps=0, total_steps=1, min_ratio=0.25) == 0.25


@pytest.mark.parametrize("fn", DECAYING + WARMUP_ONLY)
def test_numpy_numbers_work_like_python_ones_and_give_a_float(fn):
    plain = dict(VALID[fn])
    numpy = {key: np.int64(value) for key, value in plain.items() if key != "min_ratio"}
    if "min_ratio" in plain:
        plain["min_ratio"], numpy["min_ratio"] = 0.5, np.float32(0.5)  # exact in float32
    for step in (0, 5, 10, 55, 100, 400):
        value = fn(np.int32(step), **numpy)
        assert type(value) is float
        assert value == fn(step, **plain)


# --- lambda_lr ---------------------------------------------------------------------------------


def test_lambda_lr_drives_optimizer_lr():
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(
        [{"params": [model.weight], "lr": 0.5}, {"params": [model.bias], "lr": 0.1}]
    )
    kwargs = {"warmup_steps": 5, "total_steps": 20, "min_ratio": 0.1}
    scheduler = lambda_lr(optimizer, warmup_cosine, **kwargs)
    for step in range(30):
        multiplier = warmup_cosine(step, **kwargs)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * multiplier, abs=1e-15)
        assert optimizer.param_groups[1]["lr"] == pytest.approx(0.1 * multiplier, abs=1e-15)
        optimizer.step()
        scheduler.step()


def test_lambda_lr_resumes_from_state_dict():
    def make():
        optimizer = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=1.0)
        return optimizer, lambda_lr(optimizer, inverse_sqrt, warmup_steps=4)

    optimizer, scheduler = make()
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    resumed_optimizer, resumed = make()
    resumed.load_state_dict(scheduler.state_dict())
    resumed.step()
    assert resumed_optimizer.param_groups[0]["lr"] == pytest.approx(inverse_sqrt(8, warmup_steps=4))


def test_lambda_lr_rejects_bad_arguments_on_construction():
    optimizer = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=1.0)
    with pytest.raises(ValueError, match="total_steps must be >= warmup_steps"):
        lambda_lr(optimizer, warmup_linear, warmup_steps=10, total_steps=3)
    with pytest.raises(ValueError, match=r"warmup_steps must be an int >= 0, got True"):
        lambda_lr(optimizer, inverse_sqrt, warmup_steps=True)
    with pytest.raises(TypeError, match="fn must be a callable"):
        lambda_lr(optimizer, 0.5)


# --- lr_finder ---------------------------------------------------------------------------------


def _regression_batches(n_batches=8, batch=32, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, 1, generator=g)
    out = []
    for _ in range(n_batches):
        x = torch.randn(batch, dim, generator=g)
        out.append((x, x @ w + 0.01 * torch.randn(batch, 1, generator=g)))
    return out


def _mse(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


class _Output(NamedTuple):
    logits: torch.Tensor
    loss: torch.Tensor


class _NetWithLoss(nn.Module):
    """Dropout (global RNG), batch norm (buffers) and a `(x, y) -> Output(logits, loss)` forward."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(8, 1)

    def forward(self, x, y):
        logits = self.head(self.drop(self.norm(x)))
        return _Output(logits, nn.functional.mse_loss(logits, y))


def test_lr_finder_is_side_effect_free():
    torch.manual_seed(0)
    model = _NetWithLoss()
    model.head.weight.grad = torch.ones_like(model.head.weight)
    model.eval()
    model.head.train()  # a mixed state, restored module by module
    before = copy.deepcopy(model.state_dict())
    rng_before = torch.get_rng_state()
    result = lr_finder(model, _regression_batches(), num_steps=30, end_lr=1.0)
    assert len(result.lrs) >= 2
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert torch.equal(model.head.weight.grad, torch.ones_like(model.head.weight))
    assert model.head.bias.grad is None
    assert [m.training for m in model.modules()] == [False, False, False, True]
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_lr_finder_restores_a_passed_optimizer():
    model = nn.Linear(8, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    for batch in _regression_batches(n_batches=2):
        optimizer.zero_grad()
        _mse(model, batch).backward()
        optimizer.step()
    before = copy.deepcopy(optimizer.state_dict())
    lr_finder(model, _regression_batches(), optimizer=optimizer, loss_fn=_mse, num_steps=20)
    after = optimizer.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for index, state in before["state"].items():
        for key, value in state.items():
            assert torch.equal(after["state"][index][key], value), key


def test_lr_finder_lrs_are_geometric_and_losses_match_an_sgd_loop():
    batches = _regression_batches(n_batches=3)
    model = nn.Linear(8, 1)
    reference = copy.deepcopy(model)
    sgd = partial(torch.optim.SGD, lr=0.0)
    result = lr_finder(
        model, batches, optimizer_factory=sgd, loss_fn=_mse, start_lr=1e-4, end_lr=1e-1,
        num_steps=10, smoothing=1.0,
    )  # fmt: skip
    expected_lrs = [1e-4 * 1000 ** (i / 9) for i in range(10)]
    assert result.lrs == pytest.approx(expected_lrs, rel=1e-12)
    # Independent loop: plain SGD by hand, cycling the three batches.
    losses = []
    for i, lr in enumerate(expected_lrs):
        reference.zero_grad()
        loss = _mse(reference, batches[i % 3])
        loss.backward()
        with torch.no_grad():
            for param in reference.parameters():
                param -= lr * param.grad
        losses.append(loss.item())
    assert result.losses == pytest.approx(losses, rel=1e-5)


def test_lr_finder_default_loss_uses_model_output_loss_and_is_bias_corrected():
    model = _NetWithLoss().eval()
    batches = _regression_batches()
    with torch.random.fork_rng():
        torch.manual_seed(1)
        first = model.train()(*batches[0]).loss.item()
    model.eval()
    torch.manual_seed(1)
    result = lr_finder(model, batches, num_steps=5, start_lr=1e-6, end_lr=1e-5)
    # The bias-corrected average of a single loss is that loss.
    assert result.losses[0] == pytest.approx(first, rel=1e-6)


def test_lr_finder_suggests_the_steepest_descent():
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

    def loss_fn(model, batch):
        # A loss that depends only on the lr; in log10(lr) it falls fastest at -3.
        log_lr = math.log10(optimizer.param_groups[0]["lr"])
        return model.weight.sum() * 0 + 1 - 1 / (1 + math.exp(-2 * (log_lr + 3)))

    result = lr_finder(
        model, [None], optimizer=optimizer, loss_fn=loss_fn, start_lr=1e-6, end_lr=1.0,
        num_steps=61, smoothing=1.0,
    )  # fmt: skip
    assert len(result.lrs) == 61
    assert result.suggested_lr == pytest.approx(1e-3, rel=1e-9)


def test_lr_finder_suggestion_trains_linear_regression():
    batches = _regression_batches()
    model = nn.Linear(8, 1)
    result = lr_finder(model, batches, loss_fn=_mse, start_lr=1e-6, end_lr=10.0, num_steps=80)
    assert isinstance(result, LRFinderResult)
    assert result.suggested_lr in result.lrs
    assert 1e-4 <= result.suggested_lr <= 1.0
    optimizer = torch.optim.AdamW(model.parameters(), lr=result.suggested_lr)
    start = sum(_mse(model, b).item() for b in batches)
    for _ in range(5):
        for batch in batches:
            optimizer.zero_grad()
            _mse(model, batch).backward()
            optimizer.step()
    assert sum(_mse(model, b).item() for b in batches) < 0.5 * start


def test_lr_finder_stops_early_on_divergence():
    result = lr_finder(
        nn.Linear(8, 1), _regression_batches(), optimizer_factory=partial(torch.optim.SGD, lr=0.0),
        loss_fn=_mse, start_lr=1e-3, end_lr=1e3, num_steps=100, diverge_factor=4.0,
    )  # fmt: skip
    assert len(result.lrs) < 100
    assert result.losses[-1] > 4.0 * min(result.losses)
    assert all(
        loss <= 4.0 * min(result.losses[: i + 1]) for i, loss in enumerate(result.losses[:-1])
    )


def test_lr_finder_cycles_short_iterables_and_one_shot_iterators():
    batches = _regression_batches(n_batches=3)
    for source in (batches, iter(batches)):
        result = lr_finder(nn.Linear(8, 1), source, loss_fn=_mse, end_lr=1e-3, num_steps=10)
        assert len(result.lrs) == 10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"start_lr": 0.0}, r"start_lr must be a finite number > 0, got 0.0"),
        (
            {"start_lr": 1.0, "end_lr": 0.5},
            r"end_lr must be finite and > start_lr \(1.0\), got 0.5",
        ),
        ({"num_steps": 1}, r"num_steps must be an int >= 2, got 1"),
        ({"smoothing": 0.0}, r"smoothing must be a number in \(0, 1\], got 0.0"),
        ({"diverge_factor": 1.0}, r"diverge_factor must be a number > 1, got 1.0"),
        ({"optimizer_factory": torch.optim.SGD, "optimizer": "x"}, r"not both"),
    ],
)
def test_lr_finder_errors_name_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lr_finder(nn.Linear(8, 1), _regression_batches(), loss_fn=_mse, **kwargs)


@pytest.mark.parametrize(
    "param, value",
    [
        ("start_lr", True),
        ("start_lr", "1e-3"),
        ("start_lr", math.nan),
        ("end_lr", "1"),
        ("end_lr", math.nan),
        ("end_lr", math.inf),
        ("num_steps", 2.5),
        ("num_steps", True),
        ("num_steps", "10"),
        ("smoothing", True),
        ("smoothing", "0.1"),
        ("diverge_factor", math.nan),
        ("diverge_factor", "2"),
    ],
)
def test_lr_finder_refuses_bad_types_naming_the_parameter_and_the_value(param, value):
    model = nn.Linear(8, 1)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError) as error:
        lr_finder(model, _regression_batches(), loss_fn=_mse, **{param: value})
    message = str(error.value)
    assert message.startswith(f"lr_finder: {param} must be "), message
    assert message.endswith(f"got {value!r}"), message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_lr_finder_rejects_empty_batches_and_restores_the_model():
    model = nn.Linear(8, 1)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="batches must yield at least one batch"):
        lr_finder(model, [], loss_fn=_mse)
    with pytest.raises(ValueError, match="need >= 2 to suggest"):
        lr_finder(model, _regression_batches(), loss_fn=lambda m, b: _mse(m, b) * math.inf)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_lr_finder_suggestion_ignores_the_noisy_start_of_the_average():
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    calls = []

    def loss_fn(model, batch):
        # Batch noise of +-0.3 on a curve that falls fastest at lr = 1e-3. The first two
        # averages differ by 0.34, a far steeper fall than the curve's own.
        calls.append(None)
        noise = 0.3 if len(calls) % 2 else -0.3
        log_lr = math.log10(optimizer.param_groups[0]["lr"])
        return model.weight.sum() * 0 + noise + 1 - 1 / (1 + math.exp(-2 * (log_lr + 3)))

    result = lr_finder(
        model, [None], optimizer=optimizer, loss_fn=loss_fn, start_lr=1e-6, end_lr=1.0,
        num_steps=61, smoothing=0.25,
    )  # fmt: skip
    assert 1e-4 < result.suggested_lr < 1e-2

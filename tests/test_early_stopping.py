"""Tests for transformer_kit.early_stopping: hand-made runs, an independent loop, resume, scores."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transformer_kit.early_stopping import CombinedScore, EarlyStopping

NAN, INF = math.nan, math.inf

values_st = st.lists(
    st.one_of(
        st.floats(-10.0, 10.0, allow_nan=False),
        st.sampled_from([1.0, 2.0, 3.0]),  # repeats exercise ties and min_delta
        st.sampled_from([NAN, INF, -INF]),
    ),
    max_size=40,
)


def _reference(values, *, patience, min_delta, mode):
    """Independent loop: returns (stop flags, counters, best) straight from the definition."""
    best, last_improvement, stops, counters = None, -1, [], []
    for index, value in enumerate(values):
        if math.isfinite(value):
            if best is None:
                better = True
            elif mode == "min":
                better = value < best - min_delta
            else:
                better = value > best + min_delta
            if better:
                best, last_improvement = value, index
        counter = index - last_improvement
        counters.append(counter)
        stops.append(counter >= patience)
    return stops, counters, best


# ---- EarlyStopping: examples -------------------------------------------------------------------


def test_min_mode_hand_made_sequence():
    stopper = EarlyStopping(2)
    flags, counters = [], []
    for value in (5.0, 4.0, 4.5, 4.2, 3.0, 3.0, 3.5):
        flags.append(stopper.step(value))
        counters.append(stopper.counter)
    assert flags == [False, False, False, True, False, False, True]
    assert counters == [0, 0, 1, 2, 0, 1, 2]
    assert stopper.best == 3.0
    assert stopper.best_step == 4


def test_max_mode_with_min_delta():
    stopper = EarlyStopping(3, mode="max", min_delta=0.1)
    improved = []
    for value in (0.5, 0.55, 0.61, 0.65, 0.7, 0.72):
        stopper.step(value)
        improved.append(stopper.improved)
    assert improved == [True, False, True, False, False, True]
    assert stopper.best == 0.72
    assert stopper.counter == 0
    assert not stopper.should_stop


def test_improvement_resets_after_stop_advice():
    stopper = EarlyStopping(1)
    assert [stopper.step(v) for v in (1.0, 2.0, 0.5)] == [False, True, False]
    assert not stopper.should_stop


def test_non_finite_values_never_improve():
    stopper = EarlyStopping(3)
    stopper.step(NAN)
    assert (stopper.best, stopper.counter, stopper.improved) == (None, 1, False)
    stopper.step(2.0)
    assert (stopper.best, stopper.counter, stopper.improved) == (2.0, 0, True)
    for bad in (NAN, -INF, INF):
        stopper.step(bad)
        assert not stopper.improved
    assert stopper.best == 2.0
    assert stopper.should_stop


def test_best_step_records_the_given_step_or_the_evaluation_index():
    stopper = EarlyStopping(5, mode="max")
    stopper.step(0.1)
    assert stopper.best_step == 0
    stopper.step(0.2, step=500)
    assert stopper.best_step == 500
    stopper.step(0.1, step=1000)
    assert stopper.best_step == 500
    stopper.step(0.3)
    assert stopper.best_step == 3


def test_update_reads_the_monitored_key():
    stopper = EarlyStopping(1, monitor="val_loss")
    assert stopper.update({"val_loss": 2.0, "train_loss": 0.1}, step=10) is False
    assert stopper.update({"val_loss": 2.5, "train_loss": 0.0}, step=20) is True
    assert (stopper.best, stopper.best_step) == (2.0, 10)


def test_update_missing_key_lists_available_keys():
    stopper = EarlyStopping(1, monitor="val_loss")
    with pytest.raises(KeyError, match=r"'val_loss'.*\['loss', 'ppl'\]"):
        stopper.update({"ppl": 3.0, "loss": 1.0})


def test_update_with_callable_monitor():
    stopper = EarlyStopping(1, mode="max", monitor=lambda m: m["a"] - m["b"])
    stopper.update({"a": 3.0, "b": 1.0})
    assert stopper.best == 2.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"patience": 0}, "patience must be an int >= 1, got 0"),
        ({"patience": 2.5}, "patience must be an int >= 1, got 2.5"),
        ({"patience": True}, "patience must be an int >= 1, got True"),
        ({"patience": 1, "min_delta": -0.1}, "min_delta must be a finite number >= 0, got -0.1"),
        ({"patience": 1, "min_delta": NAN}, "min_delta must be a finite number >= 0, got nan"),
        ({"patience": 1, "mode": "mean"}, r"mode must be one of \('min', 'max'\), got 'mean'"),
    ],
)
def test_constructor_validation_names_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EarlyStopping(**kwargs)


def test_bad_monitor_and_value_types_are_refused():
    with pytest.raises(TypeError, match="monitor must be a metric key or a callable, got 3"):
        EarlyStopping(1, monitor=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"monitor must be a metric key, got '' \(empty\)"):
        EarlyStopping(1, monitor="")
    with pytest.raises(TypeError, match="value must be a real number, got 'x'"):
        EarlyStopping(1).step("x")  # type: ignore[arg-type]


# ---- EarlyStopping: laws -----------------------------------------------------------------------


@given(
    values=values_st,
    patience=st.integers(1, 6),
    min_delta=st.sampled_from([0.0, 0.5, 1.0]),
    mode=st.sampled_from(["min", "max"]),
)
def test_matches_independent_loop(values, patience, min_delta, mode):
    stopper = EarlyStopping(patience, min_delta=min_delta, mode=mode)
    want_stops, want_counters, want_best = _reference(
        values, patience=patience, min_delta=min_delta, mode=mode
    )
    got_stops, got_counters = [], []
    for value in values:
        got_stops.append(stopper.step(value))
        got_counters.append(stopper.counter)
        assert stopper.should_stop == (stopper.counter >= patience)
    assert got_stops == want_stops
    assert got_counters == want_counters
    assert stopper.best == want_best


@given(values=st.lists(st.floats(-100, 100), min_size=1, max_size=30))
def test_best_is_the_running_extreme_without_min_delta(values):
    low, high = EarlyStopping(1, mode="min"), EarlyStopping(1, mode="max")
    for value in values:
        low.step(value)
        high.step(value)
    assert low.best == min(values)
    assert high.best == max(values)
    assert values[low.best_step] == min(values)


@given(values=values_st, split=st.integers(0, 40), mode=st.sampled_from(["min", "max"]))
def test_resume_continues_exactly(values, split, mode):
    split = min(split, len(values))
    uninterrupted = EarlyStopping(3, min_delta=0.5, mode=mode)
    want = [uninterrupted.step(v) for v in values]

    first = EarlyStopping(3, min_delta=0.5, mode=mode)
    got = [first.step(v) for v in values[:split]]
    state = json.loads(json.dumps(first.state_dict()))  # plain Python values: JSON-safe
    resumed = EarlyStopping(3, min_delta=0.5, mode=mode)
    resumed.load_state_dict(state)
    got += [resumed.step(v) for v in values[split:]]

    assert got == want
    assert resumed.state_dict() == uninterrupted.state_dict()


def test_load_state_dict_refuses_other_mode():
    state = EarlyStopping(2, mode="min").state_dict()
    with pytest.raises(ValueError, match="state mode 'min' does not match mode 'max'"):
        EarlyStopping(2, mode="max").load_state_dict(state)


def test_load_state_dict_refuses_monitor_state_mismatch():
    state = EarlyStopping(2, mode="max", monitor=CombinedScore()).state_dict()
    with pytest.raises(ValueError, match="has monitor state"):
        EarlyStopping(2, mode="max", monitor="score").load_state_dict(state)


# ---- CombinedScore -----------------------------------------------------------------------------


def test_combined_score_hand_computation():
    score = CombinedScore({"loss": 0.3, "domain": 0.7}, baseline_loss=4.0)
    assert score({"loss": 3.0, "domain": 0.6}) == pytest.approx(0.3 * 0.25 + 0.7 * 0.6)


def test_combined_score_default_weights_and_first_loss_baseline():
    score = CombinedScore(loss_key="val_loss")
    assert score.weights == {"loss": 0.3, "domain": 0.7}
    assert score({"val_loss": 5.0, "domain": 0.5}) == pytest.approx(0.35)  # loss component 0
    assert score.baseline_loss == 5.0
    assert score({"val_loss": 2.5, "domain": 0.5}) == pytest.approx(0.3 * 0.5 + 0.35)
    assert score.state_dict() == {"baseline_loss": 5.0}


def test_combined_score_non_finite_first_loss_sets_no_baseline():
    score = CombinedScore()
    assert math.isnan(score({"loss": NAN, "domain": 0.5}))
    assert score.baseline_loss is None
    assert score({"loss": 2.0, "domain": 0.5}) == pytest.approx(0.35)
    assert score.baseline_loss == 2.0


@pytest.mark.parametrize("bad", [60.0, -0.1, 1.5, INF])
def test_combined_score_rejects_out_of_range_domain_naming_key(bad):
    score = CombinedScore({"loss": 0.3, "music": 0.7}, baseline_loss=4.0)
    with pytest.raises(ValueError, match=rf"'music' must be in \[0, 1\], got {bad!r}"):
        score({"loss": 3.0, "music": bad})


def test_combined_score_nan_domain_gives_nan():
    score = CombinedScore(baseline_loss=1.0)
    assert math.isnan(score({"loss": 1.0, "domain": NAN}))


def test_combined_score_missing_keys_are_named():
    score = CombinedScore({"loss": 0.5, "music": 0.3, "syntax": 0.2}, loss_key="val_loss")
    with pytest.raises(KeyError, match=r"lack \['syntax', 'val_loss'\]; available keys: \['loss'"):
        score({"loss": 1.0, "music": 0.5})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weights": {"loss": -0.1}}, r"weights\['loss'\] must be a finite number >= 0, got -0.1"),
        ({"weights": {"loss": NAN}}, r"weights\['loss'\] must be a finite number >= 0, got nan"),
        ({"weights": {"loss": 0.0, "domain": 0}}, "weights must not all be zero"),
        ({"weights": {}}, "weights must be a non-empty mapping"),
        ({"baseline_loss": 0.0}, "baseline_loss must be a finite number > 0, got 0.0"),
        ({"baseline_loss": -1.0}, "baseline_loss must be a finite number > 0, got -1.0"),
    ],
)
def test_combined_score_validation_names_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CombinedScore(**kwargs)


@given(
    baseline=st.floats(0.1, 10.0),
    loss=st.floats(0.0, 20.0),
    extra=st.floats(0.001, 5.0),
    domain=st.floats(0.0, 1.0),
    weights=st.tuples(st.floats(0.01, 1.0), st.floats(0.01, 1.0)),
)
def test_combined_score_rises_as_loss_falls_and_domain_rises(
    baseline, loss, extra, domain, weights
):
    score = CombinedScore({"loss": weights[0], "domain": weights[1]}, baseline_loss=baseline)
    base = score({"loss": loss, "domain": domain})
    assert score({"loss": loss + extra, "domain": domain}) < base
    assert score({"loss": loss, "domain": min(domain + 0.5, 1.0)}) >= base
    assert base == pytest.approx(weights[0] * (1 - loss / baseline) + weights[1] * domain)


def test_early_stopping_on_combined_score_end_to_end():
    stopper = EarlyStopping(2, mode="max", monitor=CombinedScore(loss_key="val_loss"))
    history = [
        {"val_loss": 4.0, "domain": 0.50},  # baseline: 0.3 * 0 + 0.7 * 0.5 = 0.35
        {"val_loss": 3.0, "domain": 0.60},  # 0.075 + 0.42 = 0.495 (best)
        {"val_loss": 2.0, "domain": 0.30},  # 0.15 + 0.21 = 0.36: lower loss, worse music
        {"val_loss": 3.6, "domain": 0.62},  # 0.03 + 0.434 = 0.464
    ]
    flags = [stopper.update(m, step=100 * i) for i, m in enumerate(history)]
    assert flags == [False, False, False, True]
    assert stopper.best == pytest.approx(0.495)
    assert stopper.best_step == 100


def test_resume_carries_the_combined_score_baseline():
    history = [{"loss": 4.0, "domain": 0.5}, {"loss": 3.0, "domain": 0.5}]
    later = {"loss": 3.5, "domain": 0.5}

    def run(load: bool) -> EarlyStopping:
        first = EarlyStopping(5, mode="max", monitor=CombinedScore())
        for metrics in history:
            first.update(metrics)
        resumed = EarlyStopping(5, mode="max", monitor=CombinedScore())
        if load:
            resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
        resumed.update(later)
        return resumed

    resumed = run(load=True)
    assert resumed.monitor.baseline_loss == 4.0
    assert resumed.best == pytest.approx(0.3 * 0.25 + 0.35)  # the 3.0 loss is still the best
    assert resumed.counter == 1
    control = run(load=False)  # forgets the baseline: 3.5 becomes the new baseline
    assert control.monitor.baseline_loss == 3.5
    assert control.best != resumed.best

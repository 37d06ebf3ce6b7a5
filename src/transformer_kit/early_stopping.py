"""Early stopping: stop when a monitored value has not improved for `patience` evaluations.

`EarlyStopping` watches one number per evaluation (a metric key or any callable on the metrics);
`CombinedScore` blends the validation loss with domain scores (e.g. musical quality) into one.
    >>> stopper = EarlyStopping(2)
    >>> [stopper.step(v) for v in (3.0, 2.5, 2.6, 2.7)]
    [False, False, False, True]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Literal, get_args

__all__ = ["CombinedScore", "EarlyStopping", "Mode"]

Mode = Literal["min", "max"]

# The seed document's musical early stopping: 0.3 * loss component + 0.7 * musical component.
_DEFAULT_WEIGHTS: Mapping[str, float] = MappingProxyType({"loss": 0.3, "domain": 0.7})


class CombinedScore:
    """A weighted score of the validation loss and domain scores; higher is better.

    The weight key ``"loss"`` reads ``metrics[loss_key]`` and contributes
    ``1 - loss / baseline_loss`` (0 at the baseline, positive once the loss falls below it). Every
    other weight key is a domain score read from ``metrics[key]`` and must lie in [0, 1]: divide a
    0-100 score by 100 first. The score is ``sum(weight_k * component_k)``; use it with
    ``EarlyStopping(..., mode="max")``.

    A NaN loss or domain score gives a NaN score (which `EarlyStopping` counts as a bad
    evaluation); any other value outside [0, 1] is an error.

    Args:
        weights: Non-negative weight per component, not all zero.
        loss_key: Metric key that the ``"loss"`` weight reads.
        baseline_loss: Loss that scores 0. When None, the first finite loss seen becomes the
            baseline and is kept in `state_dict`.

    Example:
        >>> score = CombinedScore({"loss": 0.3, "music": 0.7}, baseline_loss=4.0)
        >>> round(score({"loss": 3.0, "music": 0.6}), 6)
        0.495
    """

    def __init__(
        self,
        weights: Mapping[str, float] = _DEFAULT_WEIGHTS,
        *,
        loss_key: str = "loss",
        baseline_loss: float | None = None,
    ) -> None:
        if not isinstance(weights, Mapping) or not weights:
            raise ValueError(f"CombinedScore: weights must be a non-empty mapping, got {weights!r}")
        for key, weight in weights.items():
            if not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
                raise ValueError(
                    f"CombinedScore: weights[{key!r}] must be a finite number >= 0, got {weight!r}"
                )
        if not any(weight > 0 for weight in weights.values()):
            raise ValueError(f"CombinedScore: weights must not all be zero, got {dict(weights)!r}")
        self.weights: dict[str, float] = {key: float(w) for key, w in weights.items()}
        self.loss_key = loss_key
        self.baseline_loss: float | None = None
        if baseline_loss is not None:
            self.baseline_loss = _check_baseline(baseline_loss)

    def __call__(self, metrics: Mapping[str, float]) -> float:
        """Return the combined score of one evaluation's metrics."""
        needed = {key: self.loss_key if key == "loss" else key for key in self.weights}
        missing = sorted(metric for metric in needed.values() if metric not in metrics)
        if missing:
            raise KeyError(
                f"CombinedScore: metrics lack {missing}; available keys: {sorted(metrics)}"
            )
        score = 0.0
        for key, weight in self.weights.items():
            value = float(metrics[needed[key]])
            if key == "loss":
                component = self._loss_component(value)
            else:
                if not math.isnan(value) and not 0.0 <= value <= 1.0:
                    raise ValueError(
                        f"CombinedScore: domain score {key!r} must be in [0, 1], got {value!r} "
                        "(divide a 0-100 score by 100)"
                    )
                component = value
            score += weight * component
        return score

    def _loss_component(self, loss: float) -> float:
        if not math.isfinite(loss):
            return math.nan
        if self.baseline_loss is None:
            self.baseline_loss = _check_baseline(loss)
        return 1.0 - loss / self.baseline_loss

    def state_dict(self) -> dict[str, Any]:
        """Return the baseline loss so that a resumed run scores exactly as before."""
        return {"baseline_loss": self.baseline_loss}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the baseline saved by `state_dict`."""
        baseline = state["baseline_loss"]
        self.baseline_loss = None if baseline is None else _check_baseline(baseline)

    def __repr__(self) -> str:
        return (
            f"CombinedScore({self.weights!r}, loss_key={self.loss_key!r}, "
            f"baseline_loss={self.baseline_loss!r})"
        )


class EarlyStopping:
    """Count evaluations without improvement and say when to stop.

    An evaluation improves when ``value < best - min_delta`` (``mode="min"``) or
    ``value > best + min_delta`` (``mode="max"``). The first finite value always improves; NaN and
    infinities never do and count as bad evaluations. Stopping is advised once ``counter``, the
    number of evaluations since the last improvement, reaches ``patience``; a later improvement
    resets it.

    Args:
        patience: Bad evaluations tolerated before stopping, >= 1.
        min_delta: Margin an improvement must beat, >= 0.
        mode: "min" for losses, "max" for scores.
        monitor: Metric key read by `update`, or a callable mapping the metrics to one number
            (such as `CombinedScore`). A monitor with ``state_dict`` is saved along.

    Example:
        >>> stopper = EarlyStopping(1, mode="max", monitor="accuracy")
        >>> stopper.update({"accuracy": 0.5}), stopper.update({"accuracy": 0.4})
        (False, True)
    """

    def __init__(
        self,
        patience: int,
        *,
        min_delta: float = 0.0,
        mode: Mode = "min",
        monitor: str | Callable[[Mapping[str, float]], float] = "val_loss",
    ) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"EarlyStopping: patience must be an int >= 1, got {patience!r}")
        if not isinstance(min_delta, int | float) or not math.isfinite(min_delta) or min_delta < 0:
            raise ValueError(
                f"EarlyStopping: min_delta must be a finite number >= 0, got {min_delta!r}"
            )
        if mode not in get_args(Mode):
            raise ValueError(f"EarlyStopping: mode must be one of {get_args(Mode)}, got {mode!r}")
        if not isinstance(monitor, str) and not callable(monitor):
            raise TypeError(
                f"EarlyStopping: monitor must be a metric key or a callable, got {monitor!r}"
            )
        if monitor == "":
            raise ValueError("EarlyStopping: monitor must be a metric key, got '' (empty)")
        self.patience = patience
        self.min_delta = float(min_delta)
        self.mode: Mode = mode
        self.monitor = monitor
        self.best: float | None = None
        """Best value so far; None until the first finite value."""
        self.best_step: int | None = None
        """`step` passed with the best value, else its 0-based evaluation index."""
        self.counter = 0
        """Evaluations since the last improvement."""
        self.improved = False
        """Whether the last evaluation improved."""
        self.num_evaluations = 0

    @property
    def should_stop(self) -> bool:
        """Whether ``counter >= patience``."""
        return self.counter >= self.patience

    def step(self, value: float, *, step: int | None = None) -> bool:
        """Record one evaluation and return whether training should stop.

        Args:
            value: The monitored value.
            step: Training step to record as `best_step` if this value improves; defaults to the
                evaluation's 0-based index.
        """
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"EarlyStopping.step: value must be a real number, got {value!r}"
            ) from None
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise TypeError(f"EarlyStopping.step: step must be an int or None, got {step!r}")
        self.improved = self._improves(value)
        if self.improved:
            self.best = value
            self.best_step = self.num_evaluations if step is None else step
            self.counter = 0
        else:
            self.counter += 1
        self.num_evaluations += 1
        return self.should_stop

    def _improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, metrics: Mapping[str, float], *, step: int | None = None) -> bool:
        """Compute the monitored value from one evaluation's metrics, then `step` with it.

        Raises:
            KeyError: The monitored key is absent from ``metrics``; the message lists the keys.
        """
        if isinstance(self.monitor, str):
            if self.monitor not in metrics:
                raise KeyError(
                    f"EarlyStopping: monitor {self.monitor!r} not in metrics; "
                    f"available keys: {sorted(metrics)}"
                )
            value = metrics[self.monitor]
        else:
            value = self.monitor(metrics)
        return self.step(value, step=step)

    def state_dict(self) -> dict[str, Any]:
        """Return everything a resumed run needs, including the monitor's state if it has one."""
        state: dict[str, Any] = {
            "mode": self.mode,
            "best": self.best,
            "best_step": self.best_step,
            "counter": self.counter,
            "improved": self.improved,
            "num_evaluations": self.num_evaluations,
        }
        if _is_stateful(self.monitor):
            state["monitor"] = self.monitor.state_dict()  # type: ignore[union-attr]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state saved by `state_dict`; `patience` and `min_delta` stay as constructed.

        Raises:
            ValueError: The state was saved with another mode, or the saved and current monitors
                disagree on having state.
        """
        if state["mode"] != self.mode:
            raise ValueError(
                f"EarlyStopping.load_state_dict: state mode {state['mode']!r} does not match "
                f"mode {self.mode!r}"
            )
        has_state = _is_stateful(self.monitor)
        if ("monitor" in state) != has_state:
            raise ValueError(
                "EarlyStopping.load_state_dict: the saved state "
                f"{'has' if 'monitor' in state else 'lacks'} monitor state but monitor "
                f"{self.monitor!r} {'has' if has_state else 'has no'} state_dict/load_state_dict"
            )
        if has_state:
            self.monitor.load_state_dict(state["monitor"])  # type: ignore[union-attr]
        self.best = None if state["best"] is None else float(state["best"])
        self.best_step = state["best_step"]
        self.counter = int(state["counter"])
        self.improved = bool(state["improved"])
        self.num_evaluations = int(state["num_evaluations"])

    def __repr__(self) -> str:
        return (
            f"EarlyStopping({self.patience}, min_delta={self.min_delta!r}, mode={self.mode!r}, "
            f"monitor={self.monitor!r})"
        )


def _is_stateful(monitor: object) -> bool:
    return hasattr(monitor, "state_dict") and hasattr(monitor, "load_state_dict")


def _check_baseline(baseline: float) -> float:
    try:
        value = float(baseline)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(baseline, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"CombinedScore: baseline_loss must be a finite number > 0, got {baseline!r}"
        )
    return value

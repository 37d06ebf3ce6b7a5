"""Number checks shared by modules that validate arguments (`sampling`, `schedules`).

Each returns the value as a plain `int` or `float`, or raises a `ValueError` that reads
"<where>: <name> must be <allowed>, got <value>". Plain ints and floats take the first test,
since `schedules` run at every optimizer step; NumPy scalars and 0-dim tensors are numbers too,
bools are not.

    >>> _check_int("generate", "top_k", 5, 1)
    5
    >>> _check_real("warmup_cosine", "min_ratio", 1, "a number in [0, 1]", lambda x: 0 <= x <= 1)
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Integral, Real

import torch
from torch import Tensor

__all__: list[str] = []


def _scalar(value: object) -> object:
    """A 0-dim tensor's Python number; any other value as it is."""
    if isinstance(value, Tensor) and value.dim() == 0 and value.dtype != torch.bool:
        return value.item()
    return value


def _as_int(value: object) -> int | None:
    """`value` as an int when it is an integer (Python, NumPy, 0-dim tensor), not a bool."""
    if type(value) is int:
        return value
    value = _scalar(value)
    if isinstance(value, Integral) and not isinstance(value, bool):
        return int(value)
    return None


def _check_int(where: str, name: str, value: object, low: int, allowed: str = "") -> int:
    """`value` as an int, after checking it is a non-bool integer >= `low`.

    `allowed` replaces the default "an int >= low" in the message (to add "or None").
    """
    number = _as_int(value)
    if number is None or number < low:
        raise ValueError(f"{where}: {name} must be {allowed or f'an int >= {low}'}, got {value!r}")
    return number


def _check_real(
    where: str, name: str, value: object, allowed: str, ok: Callable[[float], bool]
) -> float:
    """`value` as a float, after checking it is a non-bool real number that passes `ok`.

    NaN reaches `ok` like any float, so a range test written as a comparison refuses it.
    """
    number: float | None = None
    if type(value) is float:
        number = value
    else:
        scalar = _scalar(value)
        if isinstance(scalar, Real) and not isinstance(scalar, bool):
            try:
                number = float(scalar)
            except OverflowError:  # an int or fraction beyond float64: infinite for the checks
                number = math.inf if int(math.trunc(scalar)) > 0 else -math.inf
    if number is None or not ok(number):
        raise ValueError(f"{where}: {name} must be {allowed}, got {value!r}")
    return number

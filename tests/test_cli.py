"""Tests for the argparse types of transformer_kit.cli (`int_in`, `real_in`): what each takes,
and the message that names the flag, the value and what is allowed. The command itself is
tested on a real run folder in test_examples.py."""

from __future__ import annotations

import argparse
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transformer_kit.cli import int_in, real_in


def _refusal(parse, text: str) -> str:
    with pytest.raises(argparse.ArgumentTypeError) as error:
        parse(text)
    return str(error.value)


@given(low=st.integers(-(2**70), 2**70), span=st.integers(0, 2**70), value=st.integers())
def test_int_in_takes_exactly_the_ints_in_its_range(low, span, value):
    high = low + span
    for parse, inside in [(int_in(low, high), low <= value <= high), (int_in(low), low <= value)]:
        if inside:
            assert parse(str(value)) == value
        else:
            assert _refusal(parse, str(value)).endswith(f", got '{value}'")


@pytest.mark.parametrize(
    "parse, text, message",
    [
        (int_in(1), "0", "must be an int >= 1, got '0'"),
        (int_in(1), "2.5", "must be an int >= 1, got '2.5'"),
        (int_in(0), "", "must be an int >= 0, got ''"),
        (int_in(1, 4096), "4097", "must be an int in [1, 4096], got '4097'"),
        (int_in(-(2**63), 2**64 - 1), str(2**64), f"in [-2**63, 2**64 - 1], got '{2**64}'"),
        (int_in(-(2**63), 2**63 - 1), "x", "must be an int in [-2**63, 2**63 - 1], got 'x'"),
        (int_in(0, 2**40), "-1", "must be an int in [0, 2**40], got '-1'"),
        (int_in(0, 2**32), "-1", "must be an int in [0, 4294967296], got '-1'"),  # small: digits
    ],
)
def test_int_in_names_the_range_and_the_value(parse, text, message):
    assert _refusal(parse, text).endswith(message)


@pytest.mark.parametrize(
    "low_ok, high_ok, taken, refused, allowed",
    [
        (True, True, ["0", "1", "0.5"], ["-0.01", "1.01"], ">= 0 and <= 1"),
        (False, True, ["1", "1e-9"], ["0", "-0.0"], "> 0 and <= 1"),
        (True, False, ["0", "0.999"], ["1"], ">= 0 and < 1"),
        (False, False, ["0.5"], ["0", "1"], "> 0 and < 1"),
    ],
)
def test_real_in_bounds_are_open_or_closed_as_asked(low_ok, high_ok, taken, refused, allowed):
    parse = real_in(0, 1, low_ok=low_ok, high_ok=high_ok)
    assert [parse(text) for text in taken] == [float(text) for text in taken]
    for text in [*refused, "nan", "inf", "-inf", "", "half"]:
        assert _refusal(parse, text) == f"must be a finite number {allowed}, got {text!r}"


def test_real_in_without_a_high_bound_still_refuses_infinity():
    parse = real_in(0, low_ok=False)
    assert parse("1e308") == 1e308 and parse("2e-3") == 2e-3
    assert _refusal(parse, "1e400") == "must be a finite number > 0, got '1e400'"  # inf
    assert real_in(-1, math.inf, low_ok=True)("-1") == -1.0


def test_argparse_names_the_flag_and_exits_with_a_usage_error(capsys):
    parser = argparse.ArgumentParser(prog="script")
    parser.add_argument("--steps", type=int_in(1), default=100)
    parser.add_argument("--dropout", type=real_in(0, 1, low_ok=True, high_ok=False), default=0.1)
    assert vars(parser.parse_args([])) == {"steps": 100, "dropout": 0.1}
    assert vars(parser.parse_args(["--steps", "7", "--dropout", "0"])) == {"steps": 7, "dropout": 0}
    for argv, message in [
        (["--steps", "0"], "argument --steps: must be an int >= 1, got '0'"),
        (["--dropout", "1"], "argument --dropout: must be a finite number >= 0 and < 1, got '1'"),
    ]:
        with pytest.raises(SystemExit) as refused:
            parser.parse_args(argv)
        assert refused.value.code == 2
        assert f"script: error: {message}" in capsys.readouterr().err

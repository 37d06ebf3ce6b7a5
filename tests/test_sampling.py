"""Tests for transformer_kit.sampling: filter and penalty laws, generate and beam search against
independent loops and exhaustive search."""

from __future__ import annotations

import doctest
import itertools
import math
import re
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn
from torch.testing import assert_close

from transformer_kit import _numbers, sampling
from transformer_kit.models import GPT, GPTConfig
from transformer_kit.sampling import (
    _beam,
    _checks,
    _filters,
    _generate,
    _penalties,
    _step,
    apply_frequency_penalty,
    apply_presence_penalty,
    apply_repetition_penalty,
    apply_temperature,
    beam_search,
    filter_min_p,
    filter_top_k,
    filter_top_p,
    generate,
    mask_allowed,
)

# --- strategies and toy models -----------------------------------------------------------------


@st.composite
def logits_tensors(draw, *, unique=False):
    """Float32 logits of shape (..., V) with 0-2 leading dims; small integers make ties common."""
    lead = draw(st.lists(st.integers(1, 3), max_size=2))
    vocab = draw(st.integers(1, 12))
    values = st.floats(-20, 20, width=32) | st.integers(-3, 3).map(float)
    return torch.from_numpy(
        draw(arrays(np.float32, (*lead, vocab), elements=values, unique=unique))
    )


ks = st.integers(1, 15)
ps = st.floats(0.0, 1.0, exclude_min=True)


def _rows(tensor):
    """The last-dim rows of a tensor as lists of Python floats."""
    return tensor.reshape(-1, tensor.size(-1)).tolist()


class Bigram(nn.Module):
    """Logits depend only on the current token: an embedding lookup (B, T) -> (B, T, V)."""

    def __init__(self, vocab_size=11, seed=0, scale=2.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(scale * torch.randn(vocab_size, vocab_size, generator=g))

    def forward(self, ids):
        return self.table[ids]


class Successor(nn.Module):
    """Deterministic bigram: token i is followed by (i + 1) % V with overwhelming probability."""

    def __init__(self, vocab_size=5):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, ids):
        return 50.0 * nn.functional.one_hot((ids + 1) % self.vocab_size, self.vocab_size).float()


class Fixed(nn.Module):
    """Returns the same logits at every position."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, ids):
        return self.logits.expand(*ids.shape, -1)


class PrefixHash(nn.Module):
    """A float64 toy language model with independent random logits for every prefix.

    The logits after `ids[:t + 1]` are a table row picked by a hash of that whole prefix, scaled
    by a random sharpness, so greedy decoding is often not optimal (about a third of the seeds
    for three tokens over a vocabulary of three).
    """

    def __init__(self, vocab_size=3, seed=0, buckets=10_007):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.vocab_size, self.buckets = vocab_size, buckets
        sharpness = torch.randn(buckets, 1, generator=g, dtype=torch.float64).exp()
        logits = torch.randn(buckets, vocab_size, generator=g, dtype=torch.float64)
        self.register_buffer("table", sharpness * logits)

    def forward(self, ids):
        code, codes = torch.zeros(ids.size(0), dtype=torch.long), []
        for t in range(ids.size(1)):
            code = (code * (self.vocab_size + 1) + ids[:, t] + 1) % self.buckets
            codes.append(code)
        return self.table[torch.stack(codes, dim=1)]  # (B, T, V)


@st.composite
def logits_and_ids(draw):
    """Logits (B, V) and ids (B, T) in [0, V), with T = 0 allowed and repeats common."""
    batch, vocab, length = draw(st.integers(1, 3)), draw(st.integers(1, 8)), draw(st.integers(0, 8))
    values = st.floats(-20, 20, width=32) | st.integers(-3, 3).map(float)
    logits = torch.from_numpy(draw(arrays(np.float32, (batch, vocab), elements=values)))
    ids = draw(arrays(np.int64, (batch, length), elements=st.integers(0, vocab - 1)))
    return logits, torch.from_numpy(ids)


# --- apply_temperature -------------------------------------------------------------------------


@given(logits=logits_tensors(), temperature=st.floats(0.05, 20.0))
def test_temperature_matches_float64_softmax(logits, temperature):
    original = logits.clone()
    probs = torch.softmax(apply_temperature(logits, temperature), dim=-1)
    expected = torch.softmax(logits.double() / temperature, dim=-1)
    assert torch.allclose(probs.double(), expected, atol=1e-6, rtol=1e-5)
    assert torch.equal(logits, original)


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.inf, math.nan])
def test_temperature_errors_name_the_parameter(temperature):
    with pytest.raises(ValueError, match="apply_temperature: temperature must be a finite number"):
        apply_temperature(torch.zeros(3), temperature)


# --- filter laws -------------------------------------------------------------------------------


@given(logits=logits_tensors(), k=ks)
def test_top_k_keeps_exactly_the_entries_at_or_above_the_kth_largest(logits, k):
    original = logits.clone()
    out = filter_top_k(logits, k)
    assert torch.equal(logits, original)
    assert out.shape == logits.shape
    for row, kept_row in zip(_rows(logits), _rows(out), strict=True):
        threshold = sorted(row, reverse=True)[min(k, len(row)) - 1]
        for value, kept in zip(row, kept_row, strict=True):
            assert kept == (value if value >= threshold else -math.inf)
        assert sum(v > -math.inf for v in kept_row) >= min(k, len(row))


@given(logits=logits_tensors(unique=True), k=ks)
def test_top_k_keeps_exactly_k_distinct_values(logits, k):
    kept = (filter_top_k(logits, k) > -math.inf).sum(dim=-1)
    assert torch.all(kept == min(k, logits.size(-1)))


def test_top_k_keeps_ties_at_the_cut():
    out = filter_top_k(torch.tensor([[1.0, 3.0, 2.0, 2.0, 0.0]]), 2)
    assert out.tolist() == [[-math.inf, 3.0, 2.0, 2.0, -math.inf]]


@given(logits=logits_tensors(), p=ps)
def test_top_p_keeps_the_smallest_top_set_with_mass_at_least_p(logits, p):
    original = logits.clone()
    out = filter_top_p(logits, p)
    assert torch.equal(logits, original)
    assert out.shape == logits.shape
    for row, kept_row in zip(_rows(logits), _rows(out), strict=True):
        probs = torch.softmax(torch.tensor(row, dtype=torch.float64), dim=0).tolist()
        kept = [i for i, v in enumerate(kept_row) if v > -math.inf]
        dropped = [i for i, v in enumerate(kept_row) if v == -math.inf]
        assert all(kept_row[i] == row[i] for i in kept)
        mass = sum(probs[i] for i in kept)
        assert mass >= p - 1e-5
        # Minimal: without its least likely member the kept set falls below p.
        assert mass - min(probs[i] for i in kept) < p + 1e-5
        # A top set: nothing dropped outranks anything kept.
        if dropped:
            assert min(row[i] for i in kept) >= max(row[i] for i in dropped)


def test_top_p_breaks_ties_by_lower_index_first():
    # Four equal entries of 0.25 each: p=0.5 keeps the first two.
    out = filter_top_p(torch.zeros(4), 0.5)
    assert out.tolist() == [0.0, 0.0, -math.inf, -math.inf]


def test_top_p_one_keeps_entries_of_tiny_probability():
    logits = torch.tensor([100.0, 0.0, -100.0])
    assert torch.equal(filter_top_p(logits, 1.0), logits)


@pytest.mark.parametrize("name", ["top_k", "top_p", "min_p"])
@given(logits=logits_tensors(), data=st.data())
def test_no_filter_removes_the_argmax(name, logits, data):
    if name == "top_k":
        out = filter_top_k(logits, data.draw(ks, label="k"))
    elif name == "top_p":
        out = filter_top_p(logits, data.draw(ps, label="p"))
    else:
        out = filter_min_p(logits, data.draw(st.floats(0.0, 1.0), label="p"))
    best = logits.argmax(dim=-1, keepdim=True)
    assert torch.equal(out.gather(-1, best), logits.gather(-1, best))


@pytest.mark.parametrize(
    "call, match",
    [
        (partial(filter_top_k, k=0), r"filter_top_k: k must be an int >= 1, got 0"),
        (partial(filter_top_k, k=-3), r"k must be an int >= 1, got -3"),
        (partial(filter_top_p, p=0.0), r"filter_top_p: p must be in \(0, 1\], got 0.0"),
        (partial(filter_top_p, p=1.5), r"p must be in \(0, 1\], got 1.5"),
        (partial(filter_top_p, p=math.nan), r"p must be in \(0, 1\], got nan"),
        (partial(filter_min_p, p=-0.1), r"filter_min_p: p must be in \[0, 1\], got -0.1"),
        (partial(filter_min_p, p=1.5), r"p must be in \[0, 1\], got 1.5"),
        (partial(filter_min_p, p=math.nan), r"p must be in \[0, 1\], got nan"),
        (partial(mask_allowed, allowed=[]), r"mask_allowed: allowed must name at least one token"),
        (partial(mask_allowed, allowed=[1, 5]), r"allowed must name token ids in \[0, 5\), got"),
        (partial(mask_allowed, allowed=[-1]), r"allowed must name token ids in \[0, 5\)"),
    ],
)
def test_filter_errors_name_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.zeros(2, 5))


# --- filter_min_p and mask_allowed -------------------------------------------------------------


@given(logits=logits_tensors(), p=st.floats(0.0, 1.0))
def test_min_p_keeps_exactly_the_entries_with_probability_at_least_p_times_the_top(logits, p):
    original = logits.clone()
    out = filter_min_p(logits, p)
    assert torch.equal(logits, original)
    assert out.shape == logits.shape
    for row, kept_row in zip(_rows(logits), _rows(out), strict=True):
        probs = torch.softmax(torch.tensor(row, dtype=torch.float64), dim=0).tolist()
        top = max(probs)
        for value, prob, kept in zip(row, probs, kept_row, strict=True):
            if abs(prob / top - p) <= 1e-5 * p:
                continue  # on the boundary float32 and float64 may round differently
            assert kept == (value if prob >= p * top else -math.inf)


def test_min_p_example_and_extremes():
    logits = torch.tensor([[0.0, 3.0, 2.0, 3.0]])
    inf = math.inf
    # probs / top = exp(logit - 3) = [0.05, 1, 0.37, 1]
    assert filter_min_p(logits, 0.3).tolist() == [[-inf, 3.0, 2.0, 3.0]]
    assert filter_min_p(logits, 0.04).tolist() == logits.tolist()
    assert filter_min_p(logits, 1.0).tolist() == [[-inf, 3.0, -inf, 3.0]]
    assert filter_min_p(logits, 0.0).tolist() == logits.tolist()


@given(logits=logits_tensors(), data=st.data())
def test_mask_allowed_keeps_exactly_the_allowed_ids(logits, data):
    vocab = logits.size(-1)
    allowed = data.draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=2 * vocab))
    original = logits.clone()
    out = mask_allowed(logits, allowed)
    assert torch.equal(logits, original)
    for row, kept_row in zip(_rows(logits), _rows(out), strict=True):
        assert kept_row == [v if i in allowed else -math.inf for i, v in enumerate(row)]


# --- penalties ---------------------------------------------------------------------------------


def _slow_repetition(row, ids, penalty):
    return [(v / penalty if v > 0 else v * penalty) if i in ids else v for i, v in enumerate(row)]


def _slow_presence(row, ids, penalty):
    return [v - penalty if i in ids else v for i, v in enumerate(row)]


def _slow_frequency(row, ids, penalty):
    return [v - penalty * ids.count(i) for i, v in enumerate(row)]


PENALTIES = {
    "repetition": (apply_repetition_penalty, _slow_repetition, st.floats(0.1, 5.0), 1.0),
    "presence": (apply_presence_penalty, _slow_presence, st.floats(-3.0, 3.0), 0.0),
    "frequency": (apply_frequency_penalty, _slow_frequency, st.floats(-3.0, 3.0), 0.0),
}


@pytest.mark.parametrize("name", PENALTIES)
@given(pair=logits_and_ids(), data=st.data())
def test_penalty_matches_a_python_loop_and_leaves_absent_tokens_alone(name, pair, data):
    penalty_fn, slow, penalties, _ = PENALTIES[name]
    logits, ids = pair
    penalty = data.draw(penalties, label="penalty")
    originals = logits.clone(), ids.clone()
    out = penalty_fn(logits, ids, penalty)
    assert torch.equal(logits, originals[0]) and torch.equal(ids, originals[1])
    for row, id_row, new_row in zip(logits.tolist(), ids.tolist(), out.tolist(), strict=True):
        expected = slow(row, id_row, penalty)
        assert new_row == pytest.approx(expected, rel=1e-6, abs=1e-5)
        absent = [i for i in range(len(row)) if i not in id_row]
        assert [new_row[i] for i in absent] == [row[i] for i in absent]


@pytest.mark.parametrize("name", PENALTIES)
@settings(max_examples=30)
@given(pair=logits_and_ids())
def test_neutral_penalty_is_the_identity(name, pair):
    penalty_fn, _, _, neutral = PENALTIES[name]
    logits, ids = pair
    assert torch.equal(penalty_fn(logits, ids, neutral), logits)


@pytest.mark.parametrize("name", PENALTIES)
@given(pair=logits_and_ids(), data=st.data())
def test_penalised_tokens_never_gain_probability_against_the_others(name, pair, data):
    penalty_fn, _, _, neutral = PENALTIES[name]
    logits, ids = pair
    penalty = data.draw(st.floats(neutral, neutral + 5.0), label="penalty")
    out = penalty_fn(logits, ids, penalty)
    for row, id_row, new_row in zip(logits.tolist(), ids.tolist(), out.tolist(), strict=True):
        present = set(id_row)
        absent = set(range(len(row))) - present
        # Log-probability ratios of a penalised to an unpenalised token only shrink.
        for i in present:
            for j in absent:
                assert new_row[i] - new_row[j] <= row[i] - row[j]
        old_mass = torch.softmax(torch.tensor(row, dtype=torch.float64), 0)[list(present)].sum()
        new_mass = torch.softmax(torch.tensor(new_row, dtype=torch.float64), 0)[list(present)].sum()
        assert new_mass <= old_mass + 1e-9


def test_penalties_by_hand_over_a_batch_and_leading_dims():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5], [2.0, -2.0, 1.0, 0.5]])
    ids = torch.tensor([[0, 1, 1], [3, 3, 3]])
    assert apply_repetition_penalty(logits, ids, 2.0).tolist() == [
        [1.0, -4.0, 1.0, 0.5],
        [2.0, -2.0, 1.0, 0.25],
    ]
    assert apply_presence_penalty(logits, ids, 0.5).tolist() == [
        [1.5, -2.5, 1.0, 0.5],
        [2.0, -2.0, 1.0, 0.0],
    ]
    assert apply_frequency_penalty(logits, ids, 0.5).tolist() == [
        [1.5, -3.0, 1.0, 0.5],
        [2.0, -2.0, 1.0, -1.0],
    ]
    # One row without a batch dimension, and a (2, 1, V) batch.
    assert apply_presence_penalty(logits[0], ids[0], 0.5).tolist() == [1.5, -2.5, 1.0, 0.5]
    nested = apply_frequency_penalty(logits[:, None], ids[:, None], 0.5)
    assert nested.tolist() == apply_frequency_penalty(logits, ids, 0.5)[:, None].tolist()


_IDS = torch.zeros(2, 1, dtype=torch.long)


@pytest.mark.parametrize(
    "penalty_fn, penalty, ids, match",
    [
        (apply_repetition_penalty, 0.0, _IDS, r"apply_repetition_penalty: penalty must be a finite"
         r" number > 0, got 0.0"),
        (apply_repetition_penalty, math.inf, _IDS, r"penalty must be a finite number > 0, got inf"),
        (apply_presence_penalty, math.nan, _IDS, r"apply_presence_penalty: penalty must be a"
         r" finite number, got nan"),
        (apply_frequency_penalty, -math.inf, _IDS, r"apply_frequency_penalty: penalty must be a"
         r" finite number, got -inf"),
        (apply_presence_penalty, 1.0, torch.tensor([[5], [0]]), r"ids must be token ids in"
         r" \[0, 5\), got ids from 0 to 5"),
        (apply_presence_penalty, 1.0, torch.tensor([[0.0], [1.0]]), r"ids must be an integer"
         r" tensor, got dtype torch.float32"),
        (apply_frequency_penalty, 1.0, torch.tensor([0, 1]), r"ids must have shape \(\.\.\., T\)"
         r" with the leading shape of logits \(2, 5\), got \(2,\)"),
        (apply_repetition_penalty, 2.0, torch.zeros(3, 1, dtype=torch.long),
         r"apply_repetition_penalty: ids must have shape"),
    ],
)  # fmt: skip
def test_penalty_errors_name_the_parameter(penalty_fn, penalty, ids, match):
    with pytest.raises(ValueError, match=match):
        penalty_fn(torch.zeros(2, 5), ids, penalty)


# --- generate ----------------------------------------------------------------------------------

prompts = (
    st.integers(1, 3)
    .flatmap(
        lambda b: st.integers(1, 4).flatmap(
            lambda t: st.lists(
                st.lists(st.integers(0, 10), min_size=t, max_size=t), min_size=b, max_size=b
            )
        )
    )
    .map(torch.tensor)
)


@given(ids=prompts, n=st.integers(0, 6), seed=st.integers(0, 3))
def test_greedy_equals_an_independent_argmax_loop(ids, n, seed):
    model = Bigram(seed=seed)
    table = model.table.tolist()
    original = ids.clone()
    out = generate(model, ids, n, temperature=0.0)
    assert torch.equal(ids, original)
    for row, prompt in zip(out.tolist(), ids.tolist(), strict=True):
        expected = list(prompt)
        for _ in range(n):
            scores = table[expected[-1]]
            expected.append(scores.index(max(scores)))
        assert row == expected


def test_greedy_skips_the_filters():
    def refuse(logits):
        raise AssertionError("filters must not run when temperature is 0")

    out = generate(Bigram(), torch.tensor([[1]]), 3, temperature=0.0, filters=[refuse], top_k=1)
    assert out.shape == (1, 4)


@given(ids=prompts, n=st.integers(0, 6), stops=st.lists(st.integers(0, 10), max_size=3))
def test_prompt_is_a_prefix_and_stopped_rows_are_padded(ids, n, stops):
    g = torch.Generator().manual_seed(0)
    out = generate(Bigram(scale=0.5), ids, n, stop_ids=stops, generator=g, pad_id=7)
    T = ids.size(1)
    assert out.dtype == ids.dtype
    assert torch.equal(out[:, :T], ids)
    first_stops = []
    for row in out[:, T:].tolist():
        first = next((i for i, token in enumerate(row) if token in stops), None)
        first_stops.append(first)
        if first is not None:
            assert all(token == 7 for token in row[first + 1 :])
    # Generation ends at the step where the last row finishes, and not before.
    if None in first_stops:
        assert out.size(1) == T + n
    else:
        assert out.size(1) == T + min(n, max(first_stops) + 1)


@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 1.0, "top_k": 1}])
def test_stop_ids_finish_each_sequence_and_end_early(sampling):
    ids = torch.tensor([[0], [2]])
    out = generate(Successor(), ids, 10, stop_ids=[3], pad_id=4, **sampling)
    assert out.tolist() == [[0, 1, 2, 3], [2, 3, 4, 4]]


def test_same_generator_seed_gives_identical_output_and_leaves_global_rng_alone():
    model, ids = Bigram(scale=0.3), torch.tensor([[1, 2], [3, 4]])
    rng_before = torch.get_rng_state()
    runs = [
        generate(model, ids, 30, top_k=8, top_p=0.95, generator=torch.Generator().manual_seed(s))
        for s in (5, 5, 6)
    ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_filter_order_is_temperature_top_k_top_p_then_extra_filters():
    seen = []

    def shift(logits):
        return logits + 1.0

    def record(logits):
        seen.append(logits.clone())
        return logits

    model = Fixed(torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]))
    generate(model, torch.tensor([[0]]), 1, temperature=0.5, top_k=3, top_p=0.8,
             filters=[shift, record])  # fmt: skip
    # By hand: /0.5 -> [0, 2, 4, 6, 8]; top-3 -> [-, -, 4, 6, 8]; softmax of [4, 6, 8] puts
    # 0.867 >= 0.8 on the last, so top-p keeps only it; then +1.
    inf = math.inf
    assert seen[0].tolist() == [[-inf, -inf, -inf, -inf, 9.0]]


def test_extra_filter_bans_a_token():
    def ban_zero(logits):
        return logits.index_fill(-1, torch.tensor([0]), -math.inf)

    model = Fixed(torch.tensor([5.0, 0.0, 0.0]))
    out = generate(model, torch.zeros(200, 1, dtype=torch.long), 1, filters=[ban_zero],
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert set(out[:, 1].tolist()) == {1, 2}


def test_sampling_frequencies_match_the_filtered_distribution():
    logits = [2.0, 1.5, 1.0, 0.5, 0.0, -1.0]
    temperature, top_k, top_p, n = 0.8, 5, 0.9, 20_000
    # Independent float64 computation of the filtered distribution.
    scaled = np.array(logits) / temperature
    scaled[np.argsort(-scaled)[top_k:]] = -np.inf
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    before = np.concatenate([[0.0], np.cumsum(probs[order])[:-1]])
    probs[order[before >= top_p]] = 0.0
    probs /= probs.sum()

    g = torch.Generator().manual_seed(1234)
    ids = torch.zeros(n, 1, dtype=torch.long)
    out = generate(Fixed(torch.tensor(logits)), ids, 1, temperature=temperature, top_k=top_k,
                   top_p=top_p, generator=g)  # fmt: skip
    counts = np.bincount(out[:, 1].numpy(), minlength=len(logits))
    kept = probs > 0
    assert kept.sum() == 4  # the cut is non-trivial on both filters
    assert np.all(counts[~kept] == 0)
    expected = n * probs[kept]
    chi_square = ((counts[kept] - expected) ** 2 / expected).sum()
    assert chi_square < 16.27  # chi-square 0.999 quantile, 3 degrees of freedom


class _Config(NamedTuple):
    block_size: int


class _CappedSum(nn.Module):
    """Next token is (sum of the context) % V; raises on more than `limit` tokens of context."""

    def __init__(self, limit, vocab_size=7, with_config=True):
        super().__init__()
        self.limit, self.vocab_size = limit, vocab_size
        if with_config:
            self.config = _Config(block_size=limit)

    def forward(self, ids):
        if ids.size(1) > self.limit:
            raise RuntimeError(f"got {ids.size(1)} tokens, block size is {self.limit}")
        nxt = ids.cumsum(dim=1) % self.vocab_size
        return 50.0 * nn.functional.one_hot(nxt, self.vocab_size).float()


@pytest.mark.parametrize("with_config", [True, False])
@given(prompt=st.lists(st.integers(0, 6), min_size=1, max_size=6), limit=st.integers(1, 4))
def test_context_is_cropped_to_the_last_block_size_tokens(with_config, prompt, limit):
    model = _CappedSum(limit, with_config=with_config)
    block_size = None if with_config else limit
    out = generate(model, torch.tensor([prompt]), 5, temperature=0.0, block_size=block_size)
    expected = list(prompt)
    for _ in range(5):
        expected.append(sum(expected[-limit:]) % 7)
    assert out.tolist() == [expected]


def test_model_output_with_logits_attribute_is_accepted():
    class WithOutput(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Bigram()

        def forward(self, ids):
            return NamedOutput(logits=self.inner(ids), loss=None)

    class NamedOutput(NamedTuple):
        logits: torch.Tensor
        loss: torch.Tensor | None

    wrapped = WithOutput()
    ids = torch.tensor([[1, 2], [3, 4]])
    expected = generate(wrapped.inner, ids, 5, generator=torch.Generator().manual_seed(3))
    actual = generate(wrapped, ids, 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(actual, expected)


def test_eval_mode_during_generation_and_modes_restored_after():
    class Recorder(Bigram):
        def forward(self, ids):
            modes.append(self.training)
            return super().forward(ids)

    modes = []
    model = nn.Sequential(Recorder(), nn.Dropout(0.5))
    model.train()
    model[1].eval()
    generate(model, torch.tensor([[1]]), 3)
    assert modes == [False, False, False]
    assert [m.training for m in model.modules()] == [True, True, False]

    model.eval()
    generate(model, torch.tensor([[1]]), 2)
    assert not any(m.training for m in model.modules())


def test_modes_restored_when_the_model_raises():
    model = _CappedSum(limit=1).train()
    with pytest.raises(RuntimeError, match="block size is 1"):
        generate(model, torch.tensor([[1, 2]]), 1, block_size=2)
    assert model.training


def test_num_threads_holds_during_generation_and_is_restored():
    class ThreadRecorder(Bigram):
        def forward(self, ids):
            seen.append(torch.get_num_threads())
            return super().forward(ids)

    seen: list[int] = []
    before = torch.get_num_threads()
    wanted = 1 if before > 1 else 2
    out = generate(ThreadRecorder(), torch.tensor([[1]]), 3, temperature=0.0, num_threads=wanted)
    assert seen == [wanted] * 3 and torch.get_num_threads() == before
    assert torch.equal(out, generate(Bigram(), torch.tensor([[1]]), 3, temperature=0.0))
    seen.clear()
    generate(ThreadRecorder(), torch.tensor([[1]]), 2)  # None: torch's setting is left alone
    assert seen == [before] * 2

    class Failing(nn.Module):
        def forward(self, ids):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        generate(Failing(), torch.tensor([[1]]), 1, num_threads=wanted)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("stop", [False, True])
def test_results_are_ordinary_tensors_though_decoding_runs_in_inference_mode(stop):
    class ModeRecorder(Successor):
        def forward(self, ids):
            modes.append(torch.is_inference_mode_enabled())
            return super().forward(ids)

    modes: list[bool] = []
    ids = torch.tensor([[1, 2], [3, 4]])
    out = generate(ModeRecorder(), ids, 4, temperature=0.0, stop_ids=[0] if stop else ())
    assert modes and all(modes)
    # Successor emits (id + 1) % 5. Stopping on 0 ends both rows after 3 steps (one unused
    # column is dropped) and pads row 1, which stopped first.
    expected = (
        [[1, 2, 3, 4, 0], [3, 4, 0, 0, 0]] if stop else [[1, 2, 3, 4, 0, 1], [3, 4, 0, 1, 2, 3]]
    )
    assert out.tolist() == expected
    assert not out.is_inference() and out.is_contiguous()
    out[0, 0] = 2  # an inference tensor would refuse this outside inference mode
    best, scores = beam_search(Bigram(), ids, 2, 3)
    assert not best.is_inference() and not scores.is_inference()
    scores.add_(1.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_new_tokens": -1}, r"generate: max_new_tokens must be an int >= 0, got -1"),
        ({"temperature": -0.5}, r"temperature must be a finite number >= 0 \(0 is greedy\)"),
        ({"top_k": 0}, r"generate: top_k must be an int >= 1 or None, got 0"),
        ({"top_p": 0.0}, r"generate: top_p must be a number in \(0, 1\] or None, got 0.0"),
        ({"top_p": 1.5}, r"top_p must be a number in \(0, 1\] or None, got 1.5"),
        ({"block_size": 0}, r"generate: block_size must be an int >= 1 or None, got 0"),
        ({"min_p": 1.5}, r"generate: min_p must be a number in \[0, 1\] or None, got 1.5"),
        ({"min_p": -0.1}, r"min_p must be a number in \[0, 1\] or None, got -0.1"),
        ({"repetition_penalty": 0.0}, r"generate: repetition_penalty must be a finite number > 0"),
        ({"presence_penalty": math.nan}, r"generate: presence_penalty must be a finite number"),
        ({"frequency_penalty": math.inf}, r"generate: frequency_penalty must be a finite number"),
        ({"num_threads": 0}, r"generate: num_threads must be an int >= 1 or None, got 0"),
        ({"num_threads": True}, r"generate: num_threads must be an int >= 1 or None, got True"),
        ({"stop_sequences": [[1], []]}, r"non-empty token sequences, got \[\] at index 1"),
        (
            {"ids": torch.tensor([1, 2])},
            r"ids must be an integer tensor \(int64 or int32\) of shape \(B, T\)",
        ),
        ({"ids": torch.zeros(1, 2)}, r"got dtype torch.float32"),
        ({"ids": torch.zeros(2, 0, dtype=torch.long)}, r"T >= 1"),
    ],
)
def test_generate_errors_name_the_parameter(kwargs, match):
    args = {"ids": torch.tensor([[1]]), "max_new_tokens": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        generate(Bigram(), args.pop("ids"), args.pop("max_new_tokens"), **args)


def test_generate_rejects_a_model_without_sequence_logits():
    class Flat(nn.Module):
        def forward(self, ids):
            return torch.zeros(ids.size(0), 5)

    with pytest.raises(ValueError, match=r"must return logits of shape \(B, T, V\).*got \(1, 5\)"):
        generate(Flat(), torch.tensor([[1]]), 1)


# --- generate: constraints, penalties, stop sequences, order ------------------------------------


def _allow_up_to_two_steps_ahead(sequence):
    """A toy grammar over 11 tokens: the next id is 1 or 2 more than the last, modulo 11."""
    return {(sequence[-1] + 1) % 11, (sequence[-1] + 2) % 11}


@pytest.mark.parametrize(
    "sampling",
    [{}, {"temperature": 2.0, "top_p": 0.99}, {"temperature": 0.0}, {"repetition_penalty": 3.0}],
)
def test_allowed_next_is_respected_over_many_seeds(sampling):
    model, ids = Bigram(scale=3.0), torch.tensor([[0, 5], [3, 3], [9, 10], [4, 1]])
    outputs = set()
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        out = generate(model, ids, 6, allowed_next=_allow_up_to_two_steps_ahead, generator=g,
                       **sampling)  # fmt: skip
        for row in out.tolist():
            for t in range(ids.size(1), len(row)):
                assert row[t] in _allow_up_to_two_steps_ahead(row[:t])
        outputs.add(tuple(map(tuple, out.tolist())))
    # Unconstrained, the model's own favourites are mostly outside the grammar.
    free = generate(model, ids, 6, generator=torch.Generator().manual_seed(0), **sampling)
    assert any(
        row[t] not in _allow_up_to_two_steps_ahead(row[:t])
        for row in free.tolist()
        for t in range(ids.size(1), len(row))
    )
    assert (len(outputs) == 1) == (sampling.get("temperature") == 0.0)


def test_allowed_next_sees_each_unfinished_row_with_its_prompt():
    calls = []

    def allow_all(sequence):
        calls.append(list(sequence))
        return range(5)

    generate(Successor(), torch.tensor([[0, 1], [2, 3]]), 3, temperature=0.0, stop_ids=[4],
             allowed_next=allow_all)  # fmt: skip
    # Row 1 emits the stop id 4 at step 0 and is not asked again.
    assert calls == [[0, 1], [2, 3], [0, 1, 2], [0, 1, 2, 3]]


def _allow_odd_steps(sequence):
    """The other toy grammar over 11 tokens: the next id is 1 or 3 more than the last."""
    return {(sequence[-1] + 1) % 11, (sequence[-1] + 3) % 11}


def test_allowed_next_as_a_sequence_gives_each_row_its_own_rule():
    model, ids = Bigram(scale=3.0), torch.tensor([[0, 5], [3, 3], [9, 10]])
    rules = [_allow_up_to_two_steps_ahead, _allow_odd_steps, _allow_odd_steps]
    for seed in range(5):
        out = generate(model, ids, 8, temperature=1.5, allowed_next=rules,
                       generator=torch.Generator().manual_seed(seed))  # fmt: skip
        for row, rule in zip(out.tolist(), rules, strict=True):
            assert all(row[t] in rule(row[:t]) for t in range(2, len(row)))
        # Each row draws what it draws under its own rule given to the whole batch.
        alone = {
            rule: generate(model, ids, 8, temperature=1.5, allowed_next=rule,
                           generator=torch.Generator().manual_seed(seed))
            for rule in set(rules)
        }  # fmt: skip
        for r, rule in enumerate(rules):
            assert torch.equal(out[r], alone[rule][r])
        assert not torch.equal(alone[_allow_odd_steps], alone[_allow_up_to_two_steps_ahead])
        # One callable per row, all the same, is the callable given once.
        same = generate(model, ids, 8, temperature=1.5, allowed_next=[_allow_odd_steps] * 3,
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip
        assert torch.equal(same, alone[_allow_odd_steps])


@pytest.mark.parametrize(
    "rules, match",
    [
        ([_allow_odd_steps] * 2, r"a sequence of 3 callables \(one per row of ids\), got 2 items"),
        ([_allow_odd_steps, 4, _allow_odd_steps], r"3 callables; item 1 is 4, not callable"),
        (7, r"allowed_next must be a callable or a sequence of 3 callables, got 7"),
        ("abc", r"allowed_next must be a callable or a sequence of 3 callables, got 'abc'"),
    ],
)
def test_allowed_next_sequence_errors_name_what_is_wrong(rules, match):
    with pytest.raises(ValueError, match=match):
        generate(Bigram(), torch.tensor([[0, 5], [3, 3], [9, 10]]), 2, allowed_next=rules)


@pytest.mark.parametrize(
    "answer, match",
    [
        (
            [],
            r"generate: allowed_next for row 1 at step 2 must name at least one token id, got \[\]",
        ),
        ({11}, r"generate: allowed_next for row 1 at step 2 must name token ids in \[0, 11\)"),
    ],
)
def test_allowed_next_errors_name_the_step_and_the_row(answer, match):
    def grammar(sequence):
        return answer if sequence[0] == 7 and len(sequence) == 4 else range(11)

    with pytest.raises(ValueError, match=match):
        generate(Bigram(), torch.tensor([[1, 2], [7, 2]]), 5, allowed_next=grammar,
                 generator=torch.Generator().manual_seed(0))  # fmt: skip


@settings(max_examples=30)
@given(
    ids=prompts,
    n=st.integers(0, 8),
    stop_ids=st.lists(st.integers(0, 3), max_size=1),
    stop_sequences=st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=3), max_size=3),
    seed=st.integers(0, 2**16),
)
def test_rows_stop_at_the_first_complete_stop_sequence_and_are_padded(
    ids, n, stop_ids, stop_sequences, seed
):
    ids = ids % 4
    g = torch.Generator().manual_seed(seed)
    model = Bigram(vocab_size=5, scale=0.3)
    with torch.no_grad():
        model.table[:, 4] = -math.inf  # token 4 is never drawn, so as pad_id it marks padding
    out = generate(model, ids, n, stop_ids=stop_ids, stop_sequences=stop_sequences,
                   generator=g, pad_id=4)  # fmt: skip
    stops = [[s] for s in stop_ids] + stop_sequences
    T = ids.size(1)
    assert torch.equal(out[:, :T], ids)
    ends = []
    for row in out[:, T:].tolist():
        # Independent scan: the first prefix of the generated tokens that ends with a stop.
        end = next(
            (i + 1 for i in range(len(row)) if any(row[: i + 1][-len(s) :] == s for s in stops)),
            None,
        )
        ends.append(end)
        if end is None:
            assert 4 not in row
        else:
            assert 4 not in row[:end] and all(token == 4 for token in row[end:])
    assert out.size(1) == T + (n if None in ends else min(n, max(ends)))


def test_multi_token_stop_sequence_by_hand_and_never_across_the_prompt():
    # Successor over 6 tokens counts up; row 1's prompt ends with 2, so [2, 3] must not match
    # at its first generated token.
    # The pad ids (5, then 2) differ from what the model would have written there (4, then 0).
    out = generate(Successor(6), torch.tensor([[0], [2]]), 10, temperature=0.0,
                   stop_sequences=[[2, 3]], pad_id=5)  # fmt: skip
    assert out.tolist() == [[0, 1, 2, 3, 5, 5, 5, 5], [2, 3, 4, 5, 0, 1, 2, 3]]
    # A single-token stop id and a longer stop sequence together; the first to complete wins.
    out = generate(Successor(6), torch.tensor([[0], [3]]), 10, temperature=0.0,
                   stop_ids=[5], stop_sequences=[[1, 2, 3]], pad_id=2)  # fmt: skip
    assert out.tolist() == [[0, 1, 2, 3], [3, 4, 5, 2]]


@settings(max_examples=30)
@given(
    ids=prompts,
    n=st.integers(0, 5),
    repetition=st.sampled_from([0.7, 1.0, 1.5, 3.0]),
    presence=st.sampled_from([-1.0, 0.0, 0.5, 2.0]),
    frequency=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_greedy_with_penalties_equals_an_independent_loop(ids, n, repetition, presence, frequency):
    model = Bigram(seed=2)
    table = model.table.tolist()
    out = generate(model, ids, n, temperature=0.0, repetition_penalty=repetition,
                   presence_penalty=presence, frequency_penalty=frequency)  # fmt: skip
    for row, prompt in zip(out.tolist(), ids.tolist(), strict=True):
        expected = list(prompt)
        for _ in range(n):
            scores = []
            for token, value in enumerate(table[expected[-1]]):
                count = expected.count(token)
                if count:
                    value = value / repetition if value > 0 else value * repetition
                    value -= presence + frequency * count
                scores.append(value)
            expected.append(scores.index(max(scores)))
        assert row == expected


def _hand_case(**kwargs):
    """The hand-computed order case: V = 6, prompt [0, 1, 1], every stage changes the result."""
    model = Fixed(torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0, 5.0]))
    return generate(model, torch.tensor([[0, 1, 1]]), 1, allowed_next=lambda s: range(5),
                    repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25,
                    **kwargs)  # fmt: skip


def test_filter_order_is_mask_penalties_temperature_top_k_top_p_min_p_then_filters():
    seen = []

    def record(logits):
        seen.append(logits.clone())
        return logits

    _hand_case(temperature=0.5, top_k=4, top_p=0.9, min_p=0.2, filters=[record])
    # By hand: allowed_next bans 5 -> [4, 3, 2, 1, 0, -]; repetition 2 on 0 and 1 -> [2, 1.5,
    # ...]; presence 0.5 -> [1.5, 1, ...]; frequency 0.25 x counts (1, 2) -> [1.25, 0.5, 2, 1,
    # 0, -]; /0.5 -> [2.5, 1, 4, 2, 0, -]; top-4 keeps >= 1 -> [2.5, 1, 4, 2, -, -]; softmax of
    # (4, 2.5, 2, 1) is (.710, .158, .096, .035), so top-0.9 keeps 4, 2.5, 2; min-0.2 keeps
    # gaps to 4 >= log 0.2 = -1.61: 2.5 stays and 2 goes.
    inf = math.inf
    assert seen[0].tolist() == [[2.5, -inf, 4.0, -inf, -inf, -inf]]


def test_greedy_takes_the_argmax_after_the_mask_and_the_penalties_only():
    def refuse(logits):
        raise AssertionError("filters must not run when temperature is 0")

    # [1.25, 0.5, 2, 1, 0, -inf]: token 2, where the raw argmax is 5 and the masked one is 0.
    out = _hand_case(temperature=0.0, top_k=1, min_p=1.0, filters=[refuse])
    assert out.tolist() == [[0, 1, 1, 2]]


def test_every_option_is_deterministic_given_the_generator():
    model, ids = Bigram(scale=0.5), torch.tensor([[1, 2], [3, 4], [5, 6]])

    def run(seed):
        return generate(model, ids, 15, temperature=1.3, top_k=9, top_p=0.97, min_p=0.01,
                        repetition_penalty=1.2, presence_penalty=0.3, frequency_penalty=0.1,
                        allowed_next=lambda s: range(1, 11), stop_sequences=[[4, 5]],
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip

    assert torch.equal(run(11), run(11))
    assert not torch.equal(run(11), run(12))


# --- beam_search -------------------------------------------------------------------------------


def _log_probs(model, prompt, hypotheses):
    """Independent float64 log-probabilities of each hypothesis after `prompt`.

    One full forward pass per hypothesis length, with no cropping and no beams.
    """
    scores = {}
    for length in {len(h) for h in hypotheses}:
        group = [h for h in hypotheses if len(h) == length]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + h for h in group])).double()  # (G, T + n, V)
        logp = torch.log_softmax(logits[:, len(prompt) - 1 : -1], dim=-1)  # (G, n, V)
        picked = logp.gather(-1, torch.tensor(group)[:, :, None]).sum(dim=(1, 2))  # (G,)
        scores.update(zip(map(tuple, group), picked.tolist(), strict=True))
    return [scores[tuple(h)] for h in hypotheses]


def _log_prob(model, prompt, tokens):
    return _log_probs(model, prompt, [tokens])[0]


def _hypotheses(vocab_size, n, stops):
    """Every finished hypothesis: up to n tokens, a stop only last, shorter ones end in a stop."""
    for length in range(1, n + 1):
        for tokens in itertools.product(range(vocab_size), repeat=length):
            if any(t in stops for t in tokens[:-1]):
                continue
            if length == n or tokens[-1] in stops:
                yield list(tokens)


def _unpad(row):
    return [token for token in row if token != -1]


@settings(max_examples=30)
@given(
    seed=st.integers(0, 50),
    n=st.integers(1, 4),
    prompt=st.lists(st.integers(0, 2), min_size=1, max_size=3),
    alpha=st.sampled_from([0.0, 0.5, 1.0, 2.0, -0.5]),
    stops=st.sampled_from([(), (0,), (1, 2)]),
)
def test_wide_beam_finds_the_exhaustive_best_and_its_score(seed, n, prompt, alpha, stops):
    model = PrefixHash(vocab_size=3, seed=seed)
    out, scores = beam_search(model, torch.tensor([prompt]), 3 ** (n - 1), n, length_penalty=alpha,
                              stop_ids=stops, pad_id=-1)  # fmt: skip
    hypotheses = list(_hypotheses(3, n, stops))
    normalised = [
        logp / len(h) ** alpha
        for h, logp in zip(hypotheses, _log_probs(model, prompt, hypotheses), strict=True)
    ]
    found = _unpad(out[0].tolist())[len(prompt) :]
    assert found in hypotheses
    assert scores.dtype == torch.float64
    assert scores.item() == pytest.approx(normalised[hypotheses.index(found)], rel=1e-9)
    assert scores.item() == pytest.approx(max(normalised), rel=1e-9)


def test_beam_search_beats_greedy_where_greedy_is_not_optimal():
    model, prompt = PrefixHash(vocab_size=3, seed=6), [1]
    greedy = generate(model, torch.tensor([prompt]), 3, temperature=0.0)[0, 1:].tolist()
    out, score = beam_search(model, torch.tensor([prompt]), 9, 3, length_penalty=0.0)
    assert out[0, 1:].tolist() != greedy
    assert score.item() > _log_prob(model, prompt, greedy) + 0.1


@settings(max_examples=30)
@given(ids=prompts, n=st.integers(0, 5), seed=st.integers(0, 5), alpha=st.floats(-1.0, 2.0))
def test_one_beam_without_stops_is_greedy(ids, n, seed, alpha):
    model = PrefixHash(vocab_size=11, seed=seed)
    out, scores = beam_search(model, ids, 1, n, length_penalty=alpha)
    assert torch.equal(out, generate(model, ids, n, temperature=0.0))
    for row, prompt, score in zip(out.tolist(), ids.tolist(), scores.tolist(), strict=True):
        tokens = row[len(prompt) :]
        expected = _log_prob(model, prompt, tokens) / max(len(tokens), 1) ** alpha if n else 0.0
        assert score == pytest.approx(expected)


@settings(max_examples=30)
@given(
    ids=prompts, num_beams=st.integers(1, 4), n=st.integers(1, 5), stops=st.sets(st.integers(0, 4))
)
def test_rows_are_searched_independently_and_padded(ids, num_beams, n, stops):
    model, ids = PrefixHash(vocab_size=5, seed=3), ids % 5
    out, scores = beam_search(model, ids, num_beams, n, stop_ids=stops, pad_id=-1)
    widths = []
    for row, score in zip(range(ids.size(0)), scores.tolist(), strict=True):
        alone, alone_score = beam_search(model, ids[row : row + 1], num_beams, n, stop_ids=stops)
        found = _unpad(out[row].tolist())
        assert found == alone[0].tolist()
        assert score == pytest.approx(alone_score.item())
        widths.append(len(found))
        generated = found[ids.size(1) :]
        assert len(generated) == n or generated[-1] in stops
    assert out.size(1) == max(widths)


def test_beam_search_edges_and_modes():
    model = PrefixHash(vocab_size=4).train()
    ids = torch.tensor([[1, 2]])
    out, scores = beam_search(model, ids, 3, 0)
    assert torch.equal(out, ids) and scores.tolist() == [0.0]
    # Every token a stop: the best one-token hypothesis, found at once.
    out, scores = beam_search(model, ids, 2, 5, stop_ids=range(4))
    assert out.shape == (1, 3)
    assert scores.item() == pytest.approx(_log_prob(model, [1, 2], [out[0, 2].item()]))
    assert model.training and all(m.training for m in model.modules())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_beams": 0}, r"beam_search: num_beams must be an int >= 1, got 0"),
        ({"max_new_tokens": -1}, r"beam_search: max_new_tokens must be an int >= 0, got -1"),
        ({"length_penalty": math.inf}, r"beam_search: length_penalty must be a finite number"),
        (
            {"stop_ids": [1, 3]},
            r"beam_search: stop_ids must hold int token ids in \[0, 3\), got 3 at index 1",
        ),
        ({"stop_ids": [-1]}, r"stop_ids must hold int token ids >= 0, got -1 at index 0"),
        ({"block_size": 0}, r"beam_search: block_size must be an int >= 1 or None, got 0"),
        (
            {"ids": torch.zeros(1, 2)},
            r"beam_search: ids must be an integer tensor \(int64 or int32\) of shape \(B, T\)",
        ),
    ],
)
def test_beam_search_errors_name_the_parameter(kwargs, match):
    args = {"ids": torch.tensor([[1]]), "num_beams": 2, "max_new_tokens": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        beam_search(PrefixHash(), args.pop("ids"), args.pop("num_beams"),
                    args.pop("max_new_tokens"), **args)  # fmt: skip


# --- argument types and token ids: refused up front, naming the parameter and the value ----------


class Configured(nn.Module):
    """Bigram logits over 11 ids with `config.vocab_size` (as `GPT` has), counting its calls."""

    def __init__(self):
        super().__init__()
        self.bigram = Bigram(vocab_size=11)
        self.config = SimpleNamespace(vocab_size=11)
        self.calls = 0

    def forward(self, ids):
        self.calls += 1
        return self.bigram(ids)


def _refusal(decode, name, shown, **kwargs):
    """Call `decode` on a `Configured` model; check the ValueError and that no step ran."""
    model = Configured()
    with pytest.raises(ValueError) as error:
        decode(model, **kwargs)
    message = str(error.value)
    assert type(error.value) is ValueError
    assert message.startswith(f"{name} must "), message  # after the function's name
    assert f"got {shown}" in message, message
    assert model.calls == 0  # checked before the first step
    return message


@pytest.mark.parametrize(
    "kwargs, name, shown",
    [
        ({"max_new_tokens": 2.5}, "max_new_tokens", "2.5"),
        ({"max_new_tokens": True}, "max_new_tokens", "True"),
        ({"max_new_tokens": "3"}, "max_new_tokens", "'3'"),
        ({"top_k": True}, "top_k", "True"),
        ({"top_k": 2.5}, "top_k", "2.5"),
        ({"top_k": "5"}, "top_k", "'5'"),
        ({"temperature": True}, "temperature", "True"),
        ({"temperature": "0.5"}, "temperature", "'0.5'"),
        ({"temperature": math.nan}, "temperature", "nan"),
        ({"top_p": True}, "top_p", "True"),
        ({"top_p": "0.9"}, "top_p", "'0.9'"),
        ({"top_p": math.nan}, "top_p", "nan"),
        ({"min_p": False}, "min_p", "False"),
        ({"min_p": "0.1"}, "min_p", "'0.1'"),
        ({"repetition_penalty": True}, "repetition_penalty", "True"),
        ({"repetition_penalty": "1.2"}, "repetition_penalty", "'1.2'"),
        ({"presence_penalty": True}, "presence_penalty", "True"),
        ({"presence_penalty": "0.5"}, "presence_penalty", "'0.5'"),
        ({"frequency_penalty": False}, "frequency_penalty", "False"),
        ({"frequency_penalty": None}, "frequency_penalty", "None"),
        ({"num_threads": 2.5}, "num_threads", "2.5"),
        ({"block_size": True}, "block_size", "True"),
        ({"block_size": 2.5}, "block_size", "2.5"),
        ({"stop_ids": [11]}, "stop_ids", "11 at index 0"),
        ({"stop_ids": [3, -1]}, "stop_ids", "-1 at index 1"),
        ({"stop_ids": [1.5]}, "stop_ids", "1.5 at index 0"),
        ({"stop_ids": [True]}, "stop_ids", "True at index 0"),
        ({"stop_ids": 3}, "stop_ids", "3"),
        ({"stop_sequences": [1, 2]}, "stop_sequences", "1 at index 0"),
        ({"stop_sequences": "12"}, "stop_sequences", "'12'"),
        ({"stop_sequences": [[1], [2, 11]]}, "stop_sequences[1]", "11 at index 1"),
        ({"stop_sequences": [[0.5]]}, "stop_sequences[0]", "0.5 at index 0"),
        ({"pad_id": -1}, "pad_id", "-1"),
        ({"pad_id": 11}, "pad_id", "11"),
        ({"pad_id": 1.5}, "pad_id", "1.5"),
        ({"pad_id": True}, "pad_id", "True"),
        ({"ids": [[1, 2]]}, "ids", "a list"),
        ({"ids": torch.tensor([[1, 11]])}, "ids", "11 at row 0, column 1"),
        ({"ids": torch.tensor([[1, 2], [-3, 4]])}, "ids", "-3 at row 1, column 0"),
        ({"attention_mask": [[True, True]]}, "attention_mask", "a list"),
    ],
)
def test_generate_refuses_bad_values_up_front_naming_the_parameter_and_the_value(
    kwargs, name, shown
):
    args = {"ids": torch.tensor([[1, 2]]), "max_new_tokens": 3} | kwargs
    message = _refusal(generate, f"generate: {name}", shown, **args)
    if name == "stop_sequences" and shown.endswith("at index 0"):  # a flat list
        assert "such as [[5, 6]]" in message and "stop_ids" in message


@pytest.mark.parametrize(
    "kwargs, name, shown",
    [
        ({"num_beams": True}, "num_beams", "True"),
        ({"num_beams": 2.5}, "num_beams", "2.5"),
        ({"num_beams": "2"}, "num_beams", "'2'"),
        ({"max_new_tokens": 2.5}, "max_new_tokens", "2.5"),
        ({"max_new_tokens": True}, "max_new_tokens", "True"),
        ({"length_penalty": True}, "length_penalty", "True"),
        ({"length_penalty": "1"}, "length_penalty", "'1'"),
        ({"length_penalty": math.nan}, "length_penalty", "nan"),
        ({"stop_ids": [11]}, "stop_ids", "11 at index 0"),
        ({"stop_ids": [1.5]}, "stop_ids", "1.5 at index 0"),
        ({"stop_ids": [False]}, "stop_ids", "False at index 0"),
        ({"stop_ids": 0}, "stop_ids", "0"),
        ({"pad_id": 1.5}, "pad_id", "1.5"),
        ({"pad_id": True}, "pad_id", "True"),
        ({"pad_id": 2**63}, "pad_id", str(2**63)),  # beyond ids' int64
        ({"block_size": True}, "block_size", "True"),
        ({"ids": [[1]]}, "ids", "a list"),
        ({"ids": torch.tensor([[11]])}, "ids", "11 at row 0, column 0"),
    ],
)
def test_beam_search_refuses_bad_values_up_front_naming_the_parameter_and_the_value(
    kwargs, name, shown
):
    args = {"ids": torch.tensor([[1]]), "num_beams": 2, "max_new_tokens": 3} | kwargs
    _refusal(beam_search, f"beam_search: {name}", shown, **args)


@pytest.mark.parametrize(
    "n, size",
    [
        (2**56, "576.5 PB"),  # the allocator refuses: past any address space, overcommit or not
        (2**62, "3.7e+19 bytes"),  # past the int64 byte count torch computes ("overflowed")
        (10**30, "8.0e+30 bytes"),  # past int64 itself (a TypeError inside torch)
    ],
)
@pytest.mark.parametrize("decode", ["generate", "beam_search"])
def test_an_output_too_large_to_allocate_is_refused_naming_max_new_tokens(decode, n, size):
    model = Configured()
    with pytest.raises(ValueError) as error:
        if decode == "generate":
            generate(model, torch.tensor([[1, 2]]), n)
        else:
            beam_search(model, torch.tensor([[1, 2]]), 2, n)
    columns = n + 2 if decode == "generate" else n  # the prompt, then the new tokens
    assert str(error.value) == (
        f"{decode}: max_new_tokens={n} needs a 1 x {columns} int64 output buffer ({size}), "
        "which cannot be allocated; ask for fewer tokens"
    )
    assert model.calls == 0  # found before the first step


@pytest.mark.parametrize(
    "ids, shown", [([[1, 2, 13]], "13 at row 0, column 2"), ([[4], [-1]], "-1 at row 1, column 0")]
)
def test_generate_and_beam_search_refuse_out_of_vocabulary_prompts(ids, shown):
    model = _gpt("learned")  # config.vocab_size 13
    prompt = torch.tensor(ids)
    expected = f"ids must hold token ids in [0, 13) (the model's config.vocab_size), got {shown}"
    with pytest.raises(ValueError, match=re.escape(f"generate: {expected}")):
        generate(model, prompt, 3)
    with pytest.raises(ValueError, match=re.escape(f"beam_search: {expected}")):
        beam_search(model, prompt, 2, 3)
    edge = torch.tensor([[0, 12]])  # the first and the last id are fine
    assert generate(model, edge, 2, temperature=0.0).shape == (1, 4)
    assert beam_search(model, edge, 2, 2)[0].shape == (1, 4)


@pytest.mark.parametrize("stop_ids, shown", [([11], "11 at index 0"), ([2, 12], "12 at index 1")])
def test_without_a_config_both_check_stop_ids_against_the_logits_alike(stop_ids, shown):
    # Bigram has no config.vocab_size: the logits' width (11) is known after the first step.
    messages = []
    decoders = {"generate": generate, "beam_search": partial(beam_search, num_beams=2)}
    for name, decode in decoders.items():
        with pytest.raises(ValueError) as error:
            decode(Bigram(), torch.tensor([[1]]), max_new_tokens=3, stop_ids=stop_ids)
        messages.append(str(error.value).removeprefix(f"{name}: "))
    assert messages == [f"stop_ids must hold int token ids in [0, 11), got {shown}"] * 2
    with pytest.raises(ValueError, match=r"generate: pad_id must be an int token id in \[0, 11\)"):
        generate(Bigram(), torch.tensor([[1]]), 3, stop_ids=[4], pad_id=11)
    with pytest.raises(ValueError, match=r"stop_sequences\[0\] must hold .* got 11 at index 1"):
        generate(Bigram(), torch.tensor([[1]]), 3, stop_sequences=[[4, 11]])


def test_numpy_numbers_and_tensor_stop_ids_work_like_python_ones():
    ids = torch.tensor([[1, 2], [3, 4]])

    def run(n, **kwargs):
        return generate(Bigram(), ids, n, generator=torch.Generator().manual_seed(0), **kwargs)

    plain = run(8, temperature=0.5, top_k=5, top_p=0.9, min_p=0.0625, repetition_penalty=1.5,
                stop_ids=[3], stop_sequences=[[5, 6]], pad_id=1, block_size=4)  # fmt: skip
    numpy = run(np.int64(8), temperature=np.float32(0.5), top_k=np.int32(5),
                top_p=np.float64(0.9), min_p=np.float32(0.0625), repetition_penalty=np.float16(1.5),
                stop_ids=torch.tensor([3]), stop_sequences=torch.tensor([[5, 6]]),
                pad_id=np.int64(1), block_size=np.int64(4))  # fmt: skip
    assert torch.equal(plain, numpy)
    best, scores = beam_search(Bigram(), ids, 2, 4, stop_ids=[3], length_penalty=1)
    numpy_best, numpy_scores = beam_search(
        Bigram(), ids, np.int64(2), np.int64(4), stop_ids=range(3, 4), length_penalty=np.float32(1)
    )
    assert torch.equal(best, numpy_best) and torch.equal(scores, numpy_scores)


def test_prompt_dtypes_and_zero_dim_tensor_arguments():
    model = GPT(GPTConfig(vocab_size=300, n_layer=1, n_head=2, d_model=16, block_size=8))
    wide = torch.tensor([[200, 299]], dtype=torch.int32)  # ids past int8's range, in the vocab
    assert generate(model, wide, 2, temperature=0.0)[0, :2].tolist() == [200, 299]
    for dtype in (torch.uint8, torch.int16, torch.float32):  # the embedding takes none of these
        with pytest.raises(ValueError, match=rf"ids must be an integer tensor \(int64 or int32\)"
                           rf".*got dtype {dtype}"):  # fmt: skip
            generate(model, torch.tensor([[20]], dtype=dtype), 2)
    # 0-dim tensors count as the numbers they hold (they did before the checks were added).
    ids = torch.tensor([[5, 7]])
    plain = generate(model, ids, 3, temperature=0.5, top_k=4, stop_ids=[9],
                     generator=torch.Generator().manual_seed(0))  # fmt: skip
    tensors = generate(model, ids, torch.tensor(3), temperature=torch.tensor(0.5),
                       top_k=torch.tensor(4), stop_ids=[torch.tensor(9)],
                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.equal(plain, tensors)
    with pytest.raises(ValueError, match="generate: top_k must be"):
        generate(model, ids, 3, top_k=torch.tensor([4, 5]))  # not one number


def test_beam_search_pad_id_only_fills_the_output_so_any_int_will_do():
    ids = torch.tensor([[1], [2], [0]])
    runs = {pad: beam_search(PrefixHash(), ids, 2, 4, stop_ids=[0], pad_id=pad) for pad in (-1, 7)}
    (marked, scores), (other, other_scores) = runs[-1], runs[7]
    assert (marked == -1).sum() == 4  # rows 1 and 2 stop after two tokens
    assert torch.equal(marked.where(marked != -1, 7), other) and torch.equal(scores, other_scores)


# --- KV cache and left padding with a GPT ------------------------------------------------------

POSITIONS = ("learned", "sinusoidal", "rope", "alibi")
_BLOCK = 8


def _gpt(position, seed=0, std=0.5, **overrides):
    """A tiny scrambled GPT; rope and alibi get max_position 12, past their block_size of 8."""
    limits = {"max_position": 12} if position in ("rope", "alibi") else {}
    fields = dict(vocab_size=13, block_size=_BLOCK, n_layer=2, n_head=2, d_model=16)
    config = GPTConfig(position=position, **(fields | limits | overrides))
    torch.manual_seed(seed)
    model = GPT(config)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():  # large weights: confident, well separated logits
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model


def _widths(model):
    """Record the width T of every ids (B, T) the model is called with."""
    widths = []
    model.register_forward_pre_hook(lambda module, args: widths.append(args[0].size(1)))
    return widths


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("mode", [{"temperature": 0.0}, {"temperature": 1.0, "top_k": 5}])
@pytest.mark.parametrize("position", POSITIONS)
def test_cached_generate_equals_full_recompute_past_the_window(position, mode):
    model = _gpt(position)
    ids = torch.randint(0, 13, (2, 3), generator=torch.Generator().manual_seed(2))
    outs = [
        generate(model, ids, 16, use_cache=flag, generator=torch.Generator().manual_seed(7), **mode)
        for flag in (True, False)
    ]
    assert outs[0].shape == (2, 19)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("position", POSITIONS)
def test_cache_feeds_one_position_per_step_until_the_window_then_slides(position):
    model = _gpt(position)
    window = model.config.context_limit  # 8, or 12 for rope and alibi
    cached = _widths(model)
    generate(model, torch.tensor([[1, 2, 3]]), 14, temperature=0.0)
    lengths = range(3, 17)  # the sequence length before each step
    # Prefill, one position per step while the cache has room, then a prefill of the window.
    assert cached == [3] + [1] * (window - 3) + [window] * (16 - window)
    model = _gpt(position)
    full = _widths(model)
    generate(model, torch.tensor([[1, 2, 3]]), 14, temperature=0.0, use_cache=False)
    assert full == [min(length, window) for length in lengths]


def test_cache_is_skipped_for_models_without_new_cache():
    model = Bigram(seed=1)
    ids = torch.tensor([[1, 2], [3, 4]])
    for kwargs in ({"temperature": 0.0}, {"generator": torch.Generator().manual_seed(0)}):
        cached = generate(model, ids, 5, **kwargs)
        if "generator" in kwargs:
            kwargs["generator"] = torch.Generator().manual_seed(0)
        assert torch.equal(cached, generate(model, ids, 5, use_cache=False, **kwargs))


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("stop_ids", [(), (4,)])
@pytest.mark.parametrize("position", POSITIONS)
def test_cached_beam_search_equals_full_recompute(position, stop_ids):
    model = _gpt(position, seed=3)
    ids = torch.randint(0, 13, (2, 3), generator=torch.Generator().manual_seed(4))
    cached = beam_search(model, ids, 3, 13, stop_ids=stop_ids)
    full = beam_search(model, ids, 3, 13, stop_ids=stop_ids, use_cache=False)
    assert torch.equal(cached[0], full[0])
    assert_close(cached[1], full[1], rtol=0, atol=1e-5)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("position", POSITIONS)
def test_stepper_rows_follow_their_reorder_like_beams(position):
    model = _gpt(position, seed=8, std=0.3).eval()
    ids = torch.randint(0, 13, (3, 4), generator=torch.Generator().manual_seed(1))
    parent = torch.tensor([2, 0, 0])
    step = _step._Stepper(model, 8, "test", use_cache=True, batch_size=3, max_length=8)
    with torch.no_grad():
        step(ids)  # prefill
        step.reorder(parent)
        longer = torch.cat([ids[parent], torch.tensor([[5], [6], [7]])], dim=1)  # (3, 5)
        cached = step(longer)  # one new position against the reordered cache
        full = _step._next_logits(model, longer, 8)
    assert step.cache.length == 5
    assert (cached - full).abs().max() < 1e-5
    assert (full[1] - full[2]).abs().max() > 1e-3  # rows 1 and 2 differ only in the new token


def _left_pad(rows, pad):
    """Rows of different lengths, left-padded with `pad`: ids and the bool mask, each (B, T)."""
    T = max(len(row) for row in rows)
    ids = torch.tensor([[pad] * (T - len(row)) + row for row in rows])
    mask = torch.tensor([[False] * (T - len(row)) + [True] * len(row) for row in rows])
    return ids, mask


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("position", POSITIONS)
def test_left_padded_rows_generate_what_each_row_generates_alone(position, use_cache):
    model = _gpt(position, seed=5)
    rows = [[3, 1, 4, 1, 5], [9, 2], [6, 5, 3]]
    ids, mask = _left_pad(rows, pad=7)  # a pad id that is not 0, so masking must work
    n = 10  # 5 + 10 slots pass block_size 8 and max_position 12
    out = generate(model, ids, n, temperature=0.0, attention_mask=mask, use_cache=use_cache)
    T = ids.size(1)
    for row, prompt in zip(out.tolist(), rows, strict=True):
        alone = generate(model, torch.tensor([prompt]), n, temperature=0.0, use_cache=use_cache)
        assert row[T:] == alone[0, len(prompt) :].tolist()
    assert len({tuple(row[T:]) for row in out.tolist()}) > 1  # the rows do differ


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("position", POSITIONS)
def test_left_padded_sampling_is_the_same_cached_or_not(position):
    model = _gpt(position, seed=6)
    ids, mask = _left_pad([[1, 2, 3, 4], [5], [6, 7]], pad=0)
    outs = [
        generate(
            model,
            ids,
            12,
            attention_mask=mask,
            use_cache=flag,
            generator=torch.Generator().manual_seed(11),
        )  # fmt: skip
        for flag in (True, False)
    ]
    assert torch.equal(outs[0], outs[1])


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    ("mask", "match"),
    [
        (torch.ones(2, 3, dtype=torch.bool), r"attention_mask must have the shape of ids \(2, 2\)"),
        (torch.tensor([[True, False], [True, True]]), "attention_mask must mark left padding"),
        (torch.tensor([[False, False], [True, True]]), "attention_mask must mark left padding"),
    ],
)
def test_attention_mask_errors_name_the_parameter(mask, match):
    with pytest.raises(ValueError, match=match):
        generate(_gpt("rope"), torch.tensor([[1, 2], [3, 4]]), 2, attention_mask=mask)


# --- documentation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module", [sampling, _beam, _checks, _filters, _generate, _penalties, _step, _numbers]
)
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_docs_example_runs(capsys):
    page = Path(__file__).resolve().parents[1] / "docs" / "sampling.md"
    code = re.search(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)
    assert code is not None
    exec(compile(code.group(1), str(page), "exec"), {})
    assert capsys.readouterr().out


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("position", ["learned", "rope"])
def test_dropping_finished_rows_leaves_every_token_unchanged(
    position: str, use_cache: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Float64, so that feeding fewer rows cannot move a logit by enough to change a draw.
    # 4 + 20 tokens pass the window (8 learned, 12 rope), so prefills of a smaller batch happen.
    model = _gpt(position, seed=3, std=0.3).double()
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 13, (8, 4), generator=gen)
    mask = torch.ones(8, 4, dtype=torch.bool)
    mask[2, :2] = mask[5, :1] = False  # two left-padded prompts
    ids[~mask] = 0

    def allowed(row: list[int]) -> list[int]:
        return [t for t in range(13) if t != row[-1]]  # never repeat the last token

    def run() -> torch.Tensor:
        return generate(
            model, ids, 20, temperature=1.0, top_k=8, repetition_penalty=1.3,
            allowed_next=allowed, stop_ids=[3, 7], pad_id=0, attention_mask=mask,
            use_cache=use_cache, generator=torch.Generator().manual_seed(11),
        )  # fmt: skip

    drops = []
    real_drop = _generate._drop_finished

    def counting(stepper, finished, fed):  # type: ignore[no-untyped-def]
        kept = real_drop(stepper, finished, fed)
        if kept is not fed:
            drops.append(int(kept.numel()))
        return kept

    monkeypatch.setattr(_generate, "_drop_finished", counting)
    dropped = run()
    monkeypatch.setattr(_generate, "_drop_finished", lambda stepper, finished, fed: fed)
    kept_all = run()
    assert drops and drops == sorted(drops, reverse=True) and drops[-1] < 8
    assert torch.equal(dropped, kept_all)
    assert (dropped[:, 4:] == 0).any()  # some rows stopped early and were padded

"""Tests for transformer_kit.sampling: filter laws, generate against independent loops."""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from transformer_kit.sampling import apply_temperature, filter_top_k, filter_top_p, generate

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


@pytest.mark.parametrize("name", ["top_k", "top_p"])
@given(logits=logits_tensors(), data=st.data())
def test_no_filter_removes_the_argmax(name, logits, data):
    if name == "top_k":
        out = filter_top_k(logits, data.draw(ks, label="k"))
    else:
        out = filter_top_p(logits, data.draw(ps, label="p"))
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
    ],
)
def test_filter_errors_name_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.zeros(2, 5))


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


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_new_tokens": -1}, r"generate: max_new_tokens must be >= 0, got -1"),
        ({"temperature": -0.5}, r"temperature must be a finite number >= 0 \(0 is greedy\)"),
        ({"top_k": 0}, r"generate: top_k must be an int >= 1 or None, got 0"),
        ({"top_p": 0.0}, r"generate: top_p must be in \(0, 1\] or None, got 0.0"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\] or None, got 1.5"),
        ({"block_size": 0}, r"generate: block_size must be an int >= 1 or None, got 0"),
        ({"ids": torch.tensor([1, 2])}, r"ids must be an integer tensor of shape \(B, T\)"),
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

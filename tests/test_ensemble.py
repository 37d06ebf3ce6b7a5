"""`models.Ensemble`: a weighted product of experts with the `GPT` calling convention."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.testing import assert_close

from transformer_kit.models import GPT, Ensemble, EnsembleCache, GPTConfig
from transformer_kit.sampling import beam_search, generate

VOCAB = 13


def _gpt(seed: int, **overrides: object) -> GPT:
    torch.manual_seed(seed)
    fields: dict[str, object] = {
        "vocab_size": VOCAB,
        "block_size": 16,
        "n_layer": 2,
        "n_head": 2,
        "d_model": 16,
        "pad_id": None,
    }
    fields.update(overrides)
    return GPT(GPTConfig.from_dict(fields)).eval()


def _members() -> list[GPT]:
    # Different architectures on purpose: each member keeps its own cache and positions.
    return [
        _gpt(0),
        _gpt(1, position="rope", max_position=40, n_layer=1),
        _gpt(2, position="alibi", max_position=40, n_head=4),
    ]


def _ids(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def test_one_member_gives_its_log_softmax_and_loss() -> None:
    model = _gpt(0)
    ids, targets = _ids(2, 9), _ids(2, 9, seed=1)
    with torch.no_grad():
        alone = model(ids, targets)
        together = Ensemble([model])(ids, targets)
    assert_close(together.logits, F.log_softmax(alone.logits, dim=-1))
    assert together.loss is not None and alone.loss is not None
    assert_close(together.loss, alone.loss)


@settings(max_examples=25, deadline=None)
@given(weights=st.lists(st.floats(0.05, 20.0), min_size=3, max_size=3))
def test_logits_are_the_renormalised_weighted_geometric_mean(weights: list[float]) -> None:
    members = _members()
    ids = _ids(2, 7)
    with torch.no_grad():
        got = Ensemble(members, weights)(ids).logits  # (B, T, V)
        probs = [F.softmax(m(ids).logits.double(), dim=-1) for m in members]
    # By hand in float64: prod_i p_i ** (w_i / sum w), then normalised over the vocabulary.
    total = sum(weights)
    product = math.prod(p ** (w / total) for p, w in zip(probs, weights, strict=True))
    expected = product / product.sum(dim=-1, keepdim=True)
    assert_close(got.exp().double(), expected, atol=1e-6, rtol=1e-5)


def test_scaling_every_weight_changes_nothing_and_twins_equal_one() -> None:
    members = _members()
    ids = _ids(1, 6)
    with torch.no_grad():
        a = Ensemble(members, [1.0, 2.0, 3.0])(ids).logits
        b = Ensemble(members, [10.0, 20.0, 30.0])(ids).logits
        twins = Ensemble([members[0], members[0]])(ids).logits
        single = F.log_softmax(members[0](ids).logits, dim=-1)
    assert_close(a, b)
    assert_close(twins, single, atol=1e-6, rtol=1e-6)


def test_loss_is_the_cross_entropy_of_the_mixture_skipping_pad_targets() -> None:
    members = [_gpt(0, pad_id=3), _gpt(1, pad_id=3)]
    ensemble = Ensemble(members, [0.3, 0.7])
    ids, targets = _ids(2, 8), _ids(2, 8, seed=5)
    targets[:, ::2] = 3  # the pad id: left out of the loss
    with torch.no_grad():
        out = ensemble(ids, targets)
    keep = targets != 3
    by_hand = -out.logits.gather(-1, targets[..., None])[..., 0][keep].mean()
    assert out.loss is not None
    assert_close(out.loss, by_hand)


def test_cached_decoding_equals_a_full_recompute() -> None:
    ensemble = Ensemble(_members(), [0.5, 0.3, 0.2]).eval()
    ids = _ids(2, 14)
    with torch.no_grad():
        full = ensemble(ids).logits
        cache = ensemble.new_cache(2)
        assert isinstance(cache, EnsembleCache) and cache.max_length == 16
        first = ensemble(ids[:, :5], cache=cache).logits  # prefill
        steps = [ensemble(ids[:, t : t + 1], cache=cache).logits for t in range(5, 14)]
    assert cache.length == 14 and all(c.length == 14 for c in cache.caches)
    assert (full - torch.cat([first, *steps], dim=1)).abs().max() < 1e-4


def test_generate_and_beam_search_with_and_without_cache_agree() -> None:
    ensemble = Ensemble(_members(), [1.0, 1.0, 2.0])
    prompt = _ids(2, 3)

    def sample(use_cache: bool) -> torch.Tensor:
        return generate(
            ensemble,
            prompt,
            20,  # past the learned member's block_size 16: the window slides
            temperature=0.9,
            generator=torch.Generator().manual_seed(7),
            use_cache=use_cache,
        )

    assert ensemble.config.context_limit == 16  # the smallest member's
    assert torch.equal(sample(True), sample(False))
    beams = [beam_search(ensemble, prompt, 3, 6, use_cache=c)[0] for c in (True, False)]
    assert torch.equal(beams[0], beams[1])


def test_cache_reset_crop_and_reorder_reach_every_member() -> None:
    ensemble = Ensemble(_members())
    cache = ensemble.new_cache(2, 10)
    with torch.no_grad():
        ensemble(_ids(2, 6), cache=cache)
    first = [c.keys[0][1].clone() for c in cache.caches]
    cache.reorder(torch.tensor([1, 1]))
    assert all(torch.equal(c.keys[0][0], k) for c, k in zip(cache.caches, first, strict=True))
    cache.crop(4)
    assert cache.length == 4 and {c.length for c in cache.caches} == {4}
    cache.reset()
    assert cache.length == 0 and {c.length for c in cache.caches} == {0}
    assert cache.batch_size == 2 and cache.max_length == 10


class _NoCache(nn.Module):
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*ids.shape, VOCAB)


def test_a_member_without_new_cache_samples_only_without_a_cache() -> None:
    ensemble = Ensemble([_gpt(0), _NoCache()])
    assert ensemble.config.context_limit is None  # one member has no known limit
    with pytest.raises(TypeError, match=r"model 1 \(_NoCache\) has no new_cache"):
        generate(ensemble, _ids(1, 2), 3, temperature=0.0)
    out = generate(ensemble, _ids(1, 2), 3, temperature=0.0, use_cache=False, block_size=16)
    # A uniform member changes no ranking: greedy tokens equal the GPT's own.
    assert torch.equal(out, generate(_gpt(0), _ids(1, 2), 3, temperature=0.0))


@pytest.mark.parametrize(
    ("models", "weights", "message"),
    [
        ([], None, "at least one model"),
        ([_gpt(0), _gpt(1, vocab_size=VOCAB + 1)], None, r"same vocab_size, got \[13, 14\]"),
        ([_gpt(0)], [1.0, 2.0], r"one entry per model \(1\), got 2"),
        ([_gpt(0), _gpt(1)], [1.0, 0.0], "finite number > 0, got 0.0"),
        ([_gpt(0), _gpt(1)], [1.0, -2.0], "finite number > 0, got -2.0"),
        ([_gpt(0), _gpt(1)], [1.0, math.nan], "finite number > 0, got nan"),
        ([_gpt(0), _gpt(1)], [True, 1.0], "finite number > 0, got True"),
    ],
)
def test_bad_arguments_are_named(models: list[nn.Module], weights: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Ensemble(models, weights)  # type: ignore[arg-type]


def test_a_cache_of_another_ensemble_is_refused() -> None:
    small = Ensemble([_gpt(0)])
    big = Ensemble([_gpt(0), _gpt(1)])
    with pytest.raises(ValueError, match="cache has 1 member caches but the ensemble has 2"):
        big(_ids(1, 2), cache=small.new_cache(1))
    with pytest.raises(ValueError, match="at least one KVCache"):
        EnsembleCache([])


def test_member_caches_share_one_length_and_a_call_that_does_not_fit_changes_none() -> None:
    ensemble = Ensemble(_members())  # context limits 16, 40 and 40
    cache = ensemble.new_cache(1)
    assert [c.max_length for c in cache.caches] == [16, 16, 16]
    with torch.no_grad():
        ensemble(_ids(1, 10), cache=cache)
        with pytest.raises(ValueError, match="do not fit the cache"):
            ensemble(_ids(1, 7), cache=cache)  # 10 + 7 > 16
        with pytest.raises(ValueError, match=r"2 rows of 1 new tokens"):
            ensemble(_ids(2, 1), cache=cache)
    assert [c.length for c in cache.caches] == [10, 10, 10]


def test_weights_may_be_any_real_numbers_and_targets_must_match_ids() -> None:
    ensemble = Ensemble(_members()[:2], [np.float32(1.0), 3])
    assert ensemble.weights == [0.25, 0.75]
    with pytest.raises(ValueError, match=r"targets must have the shape of ids \(1, 4\)"):
        ensemble(_ids(1, 4), _ids(1, 3))


@settings(max_examples=25, deadline=None)
@given(weights=st.lists(st.floats(0.05, 20.0), min_size=3, max_size=3))
def test_a_mixture_is_the_weighted_arithmetic_mean(weights: list[float]) -> None:
    members = _members()
    ids = _ids(2, 7)
    with torch.no_grad():
        got = Ensemble(members, weights, combine="mixture")(ids).logits.exp().double()
        probs = [F.softmax(m(ids).logits.double(), dim=-1) for m in members]
    total = sum(weights)
    expected = sum(p * (w / total) for p, w in zip(probs, weights, strict=True))
    assert_close(got, expected, atol=1e-6, rtol=1e-5)
    # Each token's probability lies between the members' own: never sharper than them all.
    stacked = torch.stack(probs)  # (members, B, T, V)
    assert bool((got >= stacked.min(0).values - 1e-6).all())
    assert bool((got <= stacked.max(0).values + 1e-6).all())


class _Veto(nn.Module):
    """A GPT that rules out one token: its logit is -1e9 at every position."""

    def __init__(self, model: GPT, token: int) -> None:
        super().__init__()
        self.model, self.token, self.config = model, token, model.config

    def forward(self, ids: torch.Tensor, **kwargs: object) -> torch.Tensor:
        logits = self.model(ids, **kwargs).logits.clone()
        logits[..., self.token] = -1e9
        return logits

    def new_cache(self, batch_size: int, max_length: int | None = None) -> object:
        return self.model.new_cache(batch_size, max_length)


def test_a_mixture_keeps_a_token_that_one_member_rules_out() -> None:
    members = [_gpt(0), _Veto(_gpt(1), token=5)]
    ids = _ids(1, 4)
    with torch.no_grad():
        p0 = F.softmax(members[0](ids).logits, dim=-1)[..., 5]
        product = Ensemble(members)(ids).logits.exp()[..., 5]
        mixture = Ensemble(members, combine="mixture")
        mixed = mixture(ids).logits.exp()[..., 5]
        stepped = mixture(ids, cache=mixture.new_cache(1)).logits.exp()[..., 5]
    assert bool((product < 1e-6).all())  # the product follows the veto
    assert_close(mixed, p0 / 2)  # the mixture keeps half of member 0's probability
    assert_close(stepped, mixed)


def test_combine_must_be_product_or_mixture() -> None:
    with pytest.raises(
        ValueError, match=r"combine must be one of \('product', 'mixture'\), got 'mean'"
    ):
        Ensemble([_gpt(0)], combine="mean")  # type: ignore[arg-type]
    assert Ensemble([_gpt(0)]).combine == "product"

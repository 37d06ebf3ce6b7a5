"""Rolling KV caches: decoding past the training window as sliding-window attention, checked
against a full forward with a banded mask, the cropped recompute, and by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.testing import assert_close

from transformer_kit.models import GPT, Ensemble, GPTConfig, KVCache
from transformer_kit.models import attention as attention_module
from transformer_kit.recipes.music import music_gpt
from transformer_kit.sampling import generate
from transformer_kit.tokenization import MusicTokenizer, VoiceLeading

VOCAB = 13


pytestmark = pytest.mark.usefixtures("one_thread")


def _gpt(position: str, *, n_layer: int, block: int, seed: int = 0, std: float = 0.5) -> GPT:
    """A tiny GPT with large weights (confident, well separated logits), max_position 64."""
    config = GPTConfig(
        vocab_size=VOCAB, block_size=block, n_layer=n_layer, n_head=2, d_model=16,
        position=position, max_position=64,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = GPT(config).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model


def _ids(rows: int, length: int, seed: int = 3) -> Tensor:
    return torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


def _rolling_logits(model: torch.nn.Module, ids: Tensor, window: int, prefill: int) -> Tensor:
    """Logits (B, T, V) of `ids` fed to a rolling cache of `window`: a prefill, then 1 by 1."""
    cache = model.new_cache(ids.size(0), window, rolling=True)
    with torch.no_grad():
        steps = [model(ids[:, :prefill], cache=cache).logits]
        steps += [model(ids[:, t : t + 1], cache=cache).logits for t in range(prefill, ids.size(1))]
    assert cache.fed == ids.size(1)
    assert cache.length == min(window, ids.size(1))
    return torch.cat(steps, dim=1)


def _banded(window: int):
    """`F.scaled_dot_product_attention` where query i sees keys i - window + 1 .. i only."""
    real = F.scaled_dot_product_attention

    def attend(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, enable_gqa=False):
        T, S = q.size(-2), k.size(-2)
        query = torch.arange(S - T, S)[:, None]  # the queries are the last T key slots
        key = torch.arange(S)[None, :]
        band = (key <= query) & (key > query - window)  # (T, S)
        if attn_mask is None or attn_mask.dtype == torch.bool:
            mask = band if attn_mask is None else attn_mask & band
        else:  # ALiBi's float biases
            mask = attn_mask.masked_fill(~band, float("-inf"))
        return real(q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=enable_gqa)

    return attend


@settings(max_examples=12, deadline=None)
@given(
    position=st.sampled_from(["rope", "alibi"]),
    window=st.integers(2, 9),
    prefill=st.integers(1, 9),
    n_layer=st.integers(1, 3),
)
def test_rolling_decoding_is_sliding_window_attention(position, window, prefill, n_layer):
    # Every layer of every position attends to the last `window` positions: a full forward
    # with that band as its mask computes the same thing in one pass.
    prefill = min(prefill, window)
    model = _gpt(position, n_layer=n_layer, block=window)
    ids = _ids(2, 30)
    rolling = _rolling_logits(model, ids, window, prefill)
    with pytest.MonkeyPatch.context() as patch, torch.no_grad():
        patch.setattr(attention_module.F, "scaled_dot_product_attention", _banded(window))
        reference = model(ids).logits
    assert_close(rolling, reference, rtol=0, atol=1e-4)


@settings(max_examples=12, deadline=None)
@given(
    position=st.sampled_from(["rope", "alibi"]),
    window=st.integers(2, 7),
    chunks=st.lists(st.integers(1, 12), min_size=1, max_size=6),
)
def test_any_split_into_calls_gives_the_same_sliding_window(position, window, chunks):
    # Chunks may overflow the window (a prompt longer than it, a second prompt into a full
    # cache): each token must still see its own last `window` positions, so the logits of any
    # split equal the banded full forward, and so do the loss and the cache's end state.
    model = _gpt(position, n_layer=2, block=window)
    ids = _ids(2, sum(chunks) + 1)
    inputs, targets = ids[:, :-1], ids[:, 1:].clamp(min=1)  # no pad_id 0: every target counts
    cache = model.new_cache(2, window, rolling=True)
    logits, losses, begin = [], [], 0
    with torch.no_grad():
        for size in chunks:
            out = model(inputs[:, begin : begin + size], targets[:, begin : begin + size],
                        cache=cache)  # fmt: skip
            logits.append(out.logits)
            losses.append(out.loss * size)
            begin += size
    assert (cache.fed, cache.length) == (begin, min(window, begin))
    assert cache.ids[:, : cache.length].tolist() == inputs[:, begin - cache.length :].tolist()
    with pytest.MonkeyPatch.context() as patch, torch.no_grad():
        patch.setattr(attention_module.F, "scaled_dot_product_attention", _banded(window))
        reference = model(inputs, targets)
    assert_close(torch.cat(logits, dim=1), reference.logits, rtol=0, atol=1e-4)
    assert_close(sum(losses) / begin, reference.loss, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position", ["rope", "alibi"])
def test_with_one_layer_rolling_equals_the_cropped_recompute(position):
    # One layer's keys depend on their token and position alone, and relative positions do
    # not care where the window starts: so each step equals a recompute of its last W tokens.
    window = 6
    model = _gpt(position, n_layer=1, block=window)
    ids = _ids(3, 25)
    rolling = _rolling_logits(model, ids, window, 4)
    with torch.no_grad():
        cropped = torch.stack(
            [model(ids[:, max(0, t - window + 1) : t + 1]).logits[:, -1] for t in range(25)],
            dim=1,
        )
    assert_close(rolling, cropped, rtol=0, atol=1e-4)


def test_a_music_model_rolls_past_its_window_under_voice_leading():
    # The Bach recipe's model (RoPE, bar positions and voice states read from the cache's
    # history) decodes 3x its block size one position per step. Its features see exactly the
    # last 24 tokens at every step, as a training window would, and every row stays a
    # well-formed stream.
    tok = MusicTokenizer()
    torch.manual_seed(0)
    model = music_gpt(
        tok, n_layer=2, n_head=2, d_model=16, d_ff=32, block_size=24, voice_features=True
    ).eval()
    widths: list[int] = []
    histories: list[Tensor] = []
    model.register_forward_pre_hook(lambda module, args: widths.append(args[0].size(1)))
    model.position_features.register_forward_pre_hook(
        lambda module, args: histories.append(args[0].clone())
    )
    out = generate(
        model, torch.full((3, 1), tok.start_id), 72, slide="rolling",
        allowed_next=VoiceLeading(tok), generator=torch.Generator().manual_seed(4),
    )  # fmt: skip
    assert out.shape == (3, 73) and widths == [1] * 72
    assert len(histories) == 72
    for fed, history in enumerate(histories, start=1):
        assert history.tolist() == out[:, max(0, fed - 24) : fed].tolist()
    for row in out.tolist():
        assert tok.decode(row)  # notes, and no grammar error


def test_rolling_rows_that_stop_early_leave_the_others_unchanged():
    # generate drops finished rows from the batch and its cache; a rolling cache must keep
    # each remaining row's window and positions, so every row is what it is when run alone.
    model = _gpt("rope", n_layer=2, block=6)
    prompt = _ids(4, 3, seed=11)
    free = generate(model, prompt, 30, temperature=0.0, slide="rolling")[:, 3:]
    # A stop token that ends the rows at different steps, some after the window has rolled.
    ends = {}
    for stop in range(VOCAB):
        steps = [row.index(stop) if stop in row else 30 for row in free.tolist()]
        ends[stop] = sorted(steps)
    stop = max(ends, key=lambda k: (len(set(ends[k])), ends[k][-2]))
    assert len(set(ends[stop])) >= 3 and ends[stop][-2] > 3 and ends[stop][-1] > 6  # rolled
    out = generate(model, prompt, 30, temperature=0.0, slide="rolling", stop_ids=[stop])
    for r in range(4):
        alone = generate(model, prompt[r : r + 1], 30, temperature=0.0, slide="rolling",
                         stop_ids=[stop])[0]  # fmt: skip
        assert out[r, : alone.numel()].tolist() == alone.tolist()
        assert out[r, alone.numel() :].eq(0).all()  # pad_id after the stop


def test_generate_rolling_defaults_to_the_training_window_and_feeds_one_position_per_step():
    model = _gpt("rope", n_layer=2, block=8)
    widths: list[int] = []
    model.register_forward_pre_hook(lambda module, args: widths.append(args[0].size(1)))
    out = generate(model, _ids(1, 3), 40, temperature=0.0, slide="rolling")
    assert out.shape == (1, 43)
    assert widths == [3] + [1] * 39  # never a second prefill, though 43 > block_size 8
    with pytest.MonkeyPatch.context() as patch, torch.no_grad():
        patch.setattr(attention_module.F, "scaled_dot_product_attention", _banded(8))
        reference = [model(out[:, : t + 1]).logits[:, -1].argmax(-1) for t in range(2, 42)]
    assert out[0, 3:].tolist() == [int(token) for token in reference]


@pytest.mark.parametrize("prompt", [4, 8, 12])
def test_ensemble_members_roll_each_at_its_own_window(prompt):
    # Members trained on 5 and 9 tokens: each keeps its own window, over the prompt too (8 and
    # 12 outgrow the smaller or both), and the ensemble's greedy tokens are those of a loop
    # that combines the members' banded forwards by hand.
    small, large = _gpt("rope", n_layer=2, block=5, seed=1), _gpt("rope", n_layer=2, block=9)
    ensemble = Ensemble([small, large])
    cache = ensemble.new_cache(2, rolling=True)
    assert [c.max_length for c in cache.caches] == [5, 9] and cache.rolling
    out = generate(ensemble, _ids(2, prompt), 20, temperature=0.0, slide="rolling")
    for t in range(prompt, prompt + 20):
        with torch.no_grad():
            parts = []
            for member, window in ((small, 5), (large, 9)):
                with pytest.MonkeyPatch.context() as patch:
                    patch.setattr(attention_module.F, "scaled_dot_product_attention",
                                  _banded(window))  # fmt: skip
                    parts.append(F.log_softmax(member(out[:, :t]).logits[:, -1], dim=-1))
        assert out[:, t].tolist() == ((parts[0] + parts[1]) / 2).argmax(-1).tolist()


def test_shift_moves_the_kept_slots_to_the_front_and_counts_the_dropped():
    cache = KVCache(n_layer=2, batch_size=1, n_kv_head=1, head_dim=1, max_length=5)
    for layer in range(2):
        cache.keys[layer][0, 0, :, 0] = torch.arange(5.0) + 10 * layer
        cache.values[layer][0, 0, :, 0] = -torch.arange(5.0)
    cache.ids[0] = torch.arange(5) + 100
    cache.advance(4)
    cache.shift(3)
    assert (cache.length, cache.offset, cache.fed) == (1, 3, 4)
    assert cache.keys[1][0, 0, 0, 0] == 13.0 and cache.values[0][0, 0, 0, 0] == -3.0
    assert cache.ids[0, 0] == 103
    cache.shift(0)
    assert (cache.length, cache.offset) == (1, 3)
    cache.reset()
    assert (cache.length, cache.offset, cache.fed) == (0, 0, 0)
    for bad in (2, -1, 1.0, True):
        with pytest.raises(ValueError, match=r"KVCache.shift: n must be an int in \[0, 0\]"):
            cache.shift(bad)


def test_rolling_errors_name_the_parameter():
    learned = GPT(GPTConfig(vocab_size=VOCAB, block_size=8, n_layer=1, n_head=2, d_model=16))
    with pytest.raises(ValueError, match=r"rolling needs relative positions .* 'learned'"):
        learned.new_cache(1, rolling=True)
    model = _gpt("rope", n_layer=1, block=8)
    prompt = _ids(2, 3)
    cases = [
        ({"slide": "window"}, r"slide must be one of \('recompute', 'rolling'\), got 'window'"),
        ({"slide": "rolling", "use_cache": False}, r"slide='rolling' needs use_cache=True"),
        (
            {"slide": "rolling", "attention_mask": torch.ones(2, 3, dtype=torch.bool)},
            r"slide='rolling' cannot be combined with attention_mask",
        ),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=rf"generate: {match}"):
            generate(model, prompt, 4, **kwargs)
    with pytest.raises(ValueError, match=r"= 65 must be <= the model's config.context_limit 64"):
        generate(model, prompt, 62, slide="rolling")
    with pytest.raises(ValueError, match=r"slide='rolling' needs use_cache=True .* Embedding"):
        generate(torch.nn.Embedding(5, 5), torch.tensor([[1]]), 2, slide="rolling")
    # Past max_position a rolling cache still refuses, naming the position reached.
    cache = model.new_cache(1, rolling=True)
    with torch.no_grad():
        model(_ids(1, 8), cache=cache)
        for t in range(56):
            model(_ids(1, 1, seed=t), cache=cache)
        with pytest.raises(ValueError, match=r"position 64 \+ 1 new tokens = 65 exceeds max_po"):
            model(_ids(1, 1), cache=cache)
    # A padding mask cannot follow a cache that drops columns; a refused call leaves it alone.
    cache = model.new_cache(1, 8, rolling=True)
    with torch.no_grad():
        model(_ids(1, 8), cache=cache)
        with pytest.raises(ValueError, match=r"attention_mask cannot be used with a shifted"):
            model(_ids(1, 1), cache=cache, attention_mask=torch.ones(1, 9, dtype=torch.bool))
    assert (cache.length, cache.offset) == (8, 0)


def test_ensemble_crop_keeps_fed_equal_and_a_mask_is_refused_before_any_member_runs():
    small, large = _gpt("rope", n_layer=1, block=4, seed=1), _gpt("rope", n_layer=1, block=8)
    ensemble = Ensemble([small, large])
    cache = ensemble.new_cache(1, rolling=True)
    with torch.no_grad():
        ensemble(_ids(1, 10), cache=cache)
    assert [(c.length, c.offset) for c in cache.caches] == [(4, 6), (8, 2)]
    cache.crop(2)  # the newest 2 positions go from both, wherever each window starts
    assert [(c.length, c.fed) for c in cache.caches] == [(2, 8), (6, 8)] and cache.fed == 8
    for bad in (3, -1, 1.5):
        with pytest.raises(
            ValueError, match=r"EnsembleCache.crop: length must be an int in \[0, 2\]"
        ):
            cache.crop(bad)
    # The large member has not shifted, the small one has: refused before either runs.
    with pytest.raises(ValueError, match=r"attention_mask cannot be used with a shifted cache"):
        ensemble(_ids(1, 1), cache=cache, attention_mask=torch.ones(1, 9, dtype=torch.bool))
    assert [(c.length, c.fed) for c in cache.caches] == [(2, 8), (6, 8)]

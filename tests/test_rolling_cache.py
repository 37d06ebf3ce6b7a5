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
    # history, which now holds the window only) decodes 3x its block size one position per
    # step, and every row stays a well-formed stream.
    tok = MusicTokenizer()
    torch.manual_seed(0)
    model = music_gpt(
        tok, n_layer=2, n_head=2, d_model=16, d_ff=32, block_size=24, voice_features=True
    ).eval()
    widths: list[int] = []
    model.register_forward_pre_hook(lambda module, args: widths.append(args[0].size(1)))
    out = generate(
        model, torch.full((3, 1), tok.start_id), 72, slide="rolling",
        allowed_next=VoiceLeading(tok), generator=torch.Generator().manual_seed(4),
    )  # fmt: skip
    assert out.shape == (3, 73) and widths == [1] * 72
    for row in out.tolist():
        assert tok.decode(row)  # notes, and no grammar error


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


def test_ensemble_members_roll_each_at_its_own_window():
    # Members trained on 5 and 9 tokens: each keeps its own window, and the ensemble's greedy
    # tokens are those of a loop that combines the members' banded forwards by hand.
    small, large = _gpt("rope", n_layer=2, block=5, seed=1), _gpt("rope", n_layer=2, block=9)
    ensemble = Ensemble([small, large])
    cache = ensemble.new_cache(2, rolling=True)
    assert [c.max_length for c in cache.caches] == [5, 9] and cache.rolling
    out = generate(ensemble, _ids(2, 4), 20, temperature=0.0, slide="rolling")
    for t in range(4, 24):
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

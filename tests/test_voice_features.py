"""VoiceStateFeatures (how long each voice keeps sounding) and FeatureSum, against plain loops."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.testing import assert_close

from transformer_kit.models import (
    GPT,
    BarPositionFeatures,
    FeatureSum,
    GPTConfig,
    VoiceStateFeatures,
)
from transformer_kit.models import features as features_module
from transformer_kit.tokenization import MusicTokenizer, NoteEvent

# A small vocabulary: 0 pad, 1 start, 2 bar, 3 note, 4-5 voices 1-2, 6-7 DUR 0.5 / 1.0,
# 8-10 TIME +0 / +0.5 / +1.0. At resolution 0.5 a DUR lasts 1 or 2 steps, a TIME moves 0-2.
TIMES = [0.0] * 8 + [0.0, 0.5, 1.0]
DURATIONS = [0.0] * 6 + [0.5, 1.0] + [0.0] * 3
VOICES = [4, 5]
START = 1


def _features(max_steps: int = 4, d_model: int = 8) -> VoiceStateFeatures:
    return VoiceStateFeatures(
        d_model, time_values=TIMES, duration_values=DURATIONS, voice_ids=VOICES,
        start_id=START, resolution=0.5, max_steps=max_steps,
    )  # fmt: skip


def _states_by_loop(row: list[int], max_steps: int) -> list[list[int]]:
    """Per token and voice: steps until the voice is free after the token, by a plain loop."""
    gap = max(round(d / 0.5) for d in DURATIONS) + 1  # the start token moves past every note
    clock = 0
    latest: list[int | None] = [None] * len(VOICES)
    out = []
    for position, token in enumerate(row):
        onset = clock
        clock += gap if token == START else round(TIMES[token] / 0.5)
        if token == START:
            latest = [clock] * len(VOICES)
        before = row[position - 1] if position else -1
        if DURATIONS[token] > 0 and before in VOICES:
            v = VOICES.index(before)
            end = onset + round(DURATIONS[token] / 0.5)
            latest[v] = end if latest[v] is None else max(latest[v], end)
        out.append(
            [max_steps + 1 if x is None else min(max(x - clock, 0), max_steps) for x in latest]
        )
    return out


def test_voice_states_by_hand() -> None:
    features = _features()
    # start; voice 1 holds 1.0 from 0; voice 2 plays 0.5 at 0, time +0.5, voice 2 0.5 more
    row = [1, 3, 4, 7, 8, 3, 5, 6, 9, 3, 5, 6, 9]
    assert features.voice_states(torch.tensor([row]))[0].tolist() == [
        [0, 0], [0, 0], [0, 0], [2, 0], [2, 0], [2, 0], [2, 0], [2, 1], [1, 0], [1, 0], [1, 0],
        [1, 1], [0, 0],
    ]  # fmt: skip
    # A window that starts mid-piece: voice 1 is unknown (row 5) until its first duration.
    row = [3, 5, 6, 9, 3, 4, 7, 8]
    assert features.voice_states(torch.tensor([row]))[0].tolist() == [
        [5, 5], [5, 5], [5, 1], [5, 0], [5, 0], [5, 0], [2, 0], [2, 0],
    ]  # fmt: skip


def test_a_start_token_frees_every_voice_of_the_piece_before() -> None:
    # Voice 1 holds 1.0 at the end of a piece; the next piece starts with both voices free.
    row = [1, 3, 4, 7, 8, 1, 3]
    assert features_states(row)[-2:] == [[0, 0], [0, 0]]


def features_states(row: list[int]) -> list[list[int]]:
    return _features().voice_states(torch.tensor([row]))[0].tolist()


@given(st.lists(st.integers(0, 10), min_size=1, max_size=50), st.integers(1, 6))
def test_voice_states_match_a_loop(row: list[int], max_steps: int) -> None:
    features = _features(max_steps=max_steps)
    expected = _states_by_loop(row, max_steps)
    assert features.voice_states(torch.tensor([row, row]))[1].tolist() == expected


def test_a_voice_is_free_whenever_a_real_stream_gives_it_a_note() -> None:
    tok = MusicTokenizer()
    piece = [
        NoteEvent(72, 1, 0.0, 1.0), NoteEvent(67, 2, 0.0, 2.0), NoteEvent(60, 3, 0.0, 0.5),
        NoteEvent(48, 4, 0.0, 4.0), NoteEvent(62, 3, 0.5, 0.5), NoteEvent(74, 1, 1.0, 1.0),
        NoteEvent(64, 3, 1.0, 1.0), NoteEvent(69, 2, 2.0, 2.0), NoteEvent(76, 1, 2.0, 2.0),
        NoteEvent(65, 3, 2.0, 2.0),
    ]  # fmt: skip
    ids = tok.encode(piece)
    features = VoiceStateFeatures(
        8, time_values=tok.time_values(), duration_values=tok.duration_values(),
        voice_ids=list(tok.voice_ids), start_id=tok.start_id, resolution=tok.grid,
        max_steps=round(4.0 / tok.grid),
    )  # fmt: skip
    states = features.voice_states(torch.tensor([ids]))[0].tolist()
    voice_tokens = [p for p, i in enumerate(ids) if i in tok.voice_ids]
    assert len(voice_tokens) == len(piece)
    for p in voice_tokens:
        v = ids[p] - tok.voice_ids.start
        assert states[p - 1][v] == 0  # free at its note's onset (the chorales never overlap)
        duration = tok.durations[ids[p + 1] - tok.dur_ids.start]
        assert states[p + 1][v] == round(duration / tok.grid)  # busy for the note's length
    # The stream ends <TIME:+0.0> <END> at the last onset (2.0): all four end 2.0 later, at 4.0.
    assert states[-2] == [16, 16, 16, 16]


def test_duration_values_of_the_tokenizer() -> None:
    tok = MusicTokenizer()
    values = tok.duration_values()
    assert len(values) == len(tok.vocab)
    assert [values[i] for i in tok.dur_ids] == list(tok.durations)
    assert sum(values) == sum(tok.durations)  # zero everywhere else


def _bar() -> BarPositionFeatures:
    return BarPositionFeatures(16, time_values=TIMES, bar_id=2, start_id=START, resolution=0.5)


def test_cached_decoding_with_both_features_equals_a_full_recompute() -> None:
    torch.manual_seed(0)
    both = FeatureSum([_bar(), _features(d_model=16)])
    config = GPTConfig(
        vocab_size=11, n_layer=2, n_head=2, d_model=16, block_size=32, position="rope",
        max_position=64,
    )  # fmt: skip
    model = GPT(config, position_features=both).eval()
    gen = torch.Generator().manual_seed(3)
    ids = torch.cat(
        [torch.ones(2, 1, dtype=torch.long), torch.randint(2, 11, (2, 29), generator=gen)], 1
    )
    cache = model.new_cache(2)
    with torch.no_grad():
        full = model(ids).logits
        steps = [model(ids[:, :5], cache=cache).logits]
        steps += [model(ids[:, t : t + 1], cache=cache).logits for t in range(5, 30)]
    assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-4)


class _Recorder(nn.Module):
    """A feature module without history that records the ids it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[list[int]]] = []
        self.table = nn.Embedding(11, 8)

    def forward(self, ids: Tensor, positions: Tensor) -> Tensor:
        self.seen.append(ids.tolist())
        return self.table(ids)


def test_feature_sum_adds_its_parts_and_gives_history_only_to_those_that_use_it() -> None:
    voice, plain = _features(), _Recorder()
    both = FeatureSum([voice, plain])
    assert both.uses_history
    history = torch.tensor([[1, 3, 4, 7, 8, 3]])
    out = both(history, torch.tensor([4, 5]))  # the last two tokens are new
    assert plain.seen == [[[8, 3]]]
    expected = voice(history, torch.tensor([4, 5])) + plain.table(history[:, -2:])
    assert_close(out, expected)
    assert not FeatureSum([_Recorder()]).uses_history


def test_feature_sum_doctest_and_empty() -> None:
    import doctest

    assert doctest.testmod(features_module).failed == 0
    with pytest.raises(ValueError, match="FeatureSum: modules must hold at least one module"):
        FeatureSum([])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"d_model": 0}, "d_model must be a positive int, got 0"),
        ({"time_values": [0.0, -1.0]}, "time_values must be a non-empty sequence"),
        ({"duration_values": [0.0] * 3}, r"duration_values must have one entry per id .* got 3"),
        ({"voice_ids": [4, 11]}, r"voice_ids must be a non-empty sequence of ids in \[0, 11\)"),
        ({"voice_ids": []}, "voice_ids must be a non-empty sequence"),
        ({"start_id": 11}, r"start_id must be an id in \[0, 11\), got 11"),
        ({"start_id": True}, "start_id must be an int id, got True"),
        ({"resolution": 0}, "resolution must be a number > 0, got 0"),
        ({"max_steps": 0}, "max_steps must be a positive int, got 0"),
    ],
)
def test_voice_state_features_reject_bad_arguments(overrides: dict, message: str) -> None:
    kwargs: dict = {
        "d_model": 8, "time_values": TIMES, "duration_values": DURATIONS, "voice_ids": VOICES,
        "start_id": START, "resolution": 0.5, "max_steps": 4,
    }  # fmt: skip
    kwargs.update(overrides)
    d_model = kwargs.pop("d_model")
    with pytest.raises(ValueError, match=f"VoiceStateFeatures: {message}"):
        VoiceStateFeatures(d_model, **kwargs)


def test_a_key_token_moves_no_clock_holds_no_voice_and_starts_no_bar() -> None:
    plain, keyed = MusicTokenizer(), MusicTokenizer(key_tokens=True)
    piece = [
        NoteEvent(72, 1, 0.0, 1.0, key=3), NoteEvent(48, 2, 0.0, 3.0), NoteEvent(74, 1, 1.0, 1.0),
        NoteEvent(76, 1, 4.0, 2.0, bar=1), NoteEvent(50, 2, 4.0, 2.0, bar=1),
    ]  # fmt: skip
    a, b = plain.encode(piece), keyed.encode(piece)
    assert b[1] in keyed.key_ids and [b[0], *b[2:]] == a  # the same stream, the key inserted
    for tok in (plain, keyed):
        assert len(tok.time_values()) == len(tok.duration_values()) == len(tok.vocab)
    bars, voices = [], []
    for tok, ids in ((plain, a), (keyed, b)):
        bar = BarPositionFeatures(
            8, time_values=tok.time_values(), bar_id=tok.bar_id, start_id=tok.start_id,
            resolution=tok.grid, max_steps=32,
        )  # fmt: skip
        state = VoiceStateFeatures(
            8, time_values=tok.time_values(), duration_values=tok.duration_values(),
            voice_ids=list(tok.voice_ids), start_id=tok.start_id, resolution=tok.grid,
            max_steps=32,
        )  # fmt: skip
        row = torch.tensor([ids])
        bars.append(bar.bar_positions(row)[0].tolist())
        voices.append(state.voice_states(row)[0].tolist())
        assert FeatureSum([bar, state])(row, torch.arange(len(ids))).shape == (1, len(ids), 8)
    # The key token reads as the <START> before it; every later token as without the key.
    assert bars[1][1] == bars[1][0] and [bars[1][0], *bars[1][2:]] == bars[0]
    assert voices[1][1] == voices[1][0] and [voices[1][0], *voices[1][2:]] == voices[0]
    at = a.index(plain.bar_id)  # before the last TIME of bar 0 the clock is at 1.0; then reset
    assert (bars[0][at - 1], bars[0][at + 1]) == (round(1.0 / plain.grid), 0)

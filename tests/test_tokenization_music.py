"""Tests for transformer_kit.tokenization.music: vocabulary, stream, grammar, quantize, files."""

from __future__ import annotations

import doctest
import json
import math
from pathlib import Path

import pytest
import torch
from _music_models import tiny_music_gpt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transformer_kit.sampling import generate
from transformer_kit.tokenization import (
    DEFAULT_DURATIONS,
    DEFAULT_TIME_STEPS,
    CharTokenizer,
    MusicTokenizer,
    NoteEvent,
    Tokenizer,
    load_tokenizer,
)
from transformer_kit.tokenization import music as music_module
from transformer_kit.tokenization.events import sort_events

TOK = MusicTokenizer()
TOKENIZERS = {
    "default": TOK,
    "triplets": MusicTokenizer(
        min_pitch=55, max_pitch=79, voices=2, durations=(1 / 3, 2 / 3, 1.0, 2.0),
        time_steps=(0.0, 1 / 3, 2 / 3, 1.0, 2.0),
    ),
    "coarse": MusicTokenizer(min_pitch=60, max_pitch=60, voices=1, durations=(1.0,),
                             time_steps=(0.0, 1.0)),
    "keyed": MusicTokenizer(key_tokens=True),
    "fermatas": MusicTokenizer(fermata_tokens=True),
    "keyed_fermatas": MusicTokenizer(min_pitch=48, max_pitch=72, voices=3, key_tokens=True,
                                     fermata_tokens=True),
}  # fmt: skip
KEYED = TOKENIZERS["keyed"]
HELD = TOKENIZERS["fermatas"]
tmp_path_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


def _names(tok: MusicTokenizer, ids: list[int]) -> list[str]:
    return [tok.vocab.id_to_token(i) for i in ids]


# -- strategies ----------------------------------------------------------------------------

# Times either anywhere or on a 1/8 grid, so chords and exact values are common.
TIMES = st.one_of(
    st.floats(0.0, 40.0), st.integers(0, 320).map(lambda k: k * 0.125)
)  # fmt: skip
LENGTHS = st.one_of(
    st.floats(1e-3, 24.0), st.integers(1, 64).map(lambda k: k * 0.125)
)  # fmt: skip


def events_for(tok: MusicTokenizer, max_size: int = 14) -> st.SearchStrategy[list[NoteEvent]]:
    """Any valid event list for `tok`: pitches in range, any order, bars unrelated to time."""
    event = st.builds(
        NoteEvent,
        pitch=st.integers(tok.min_pitch, tok.max_pitch),
        voice=st.integers(1, tok.voices),
        onset=TIMES,
        duration=LENGTHS,
        bar=st.integers(0, 12),
        key=st.integers(-7, 7),
        fermata=st.booleans(),
    )
    return st.lists(event, max_size=max_size)


@st.composite
def tokenizer_and_events(draw: st.DrawFn) -> tuple[MusicTokenizer, list[NoteEvent]]:
    tok = TOKENIZERS[draw(st.sampled_from(sorted(TOKENIZERS)))]
    return tok, draw(events_for(tok))


# -- vocabulary ----------------------------------------------------------------------------


def test_vocabulary_layout() -> None:
    vocab = TOK.vocab
    assert vocab.tokens[:5] == ("<PAD>", "<START>", "<END>", "<BAR>", "<REST>")
    assert (TOK.pad_id, TOK.start_id, TOK.end_id, TOK.bar_id, TOK.rest_id) == (0, 1, 2, 3, 4)
    assert vocab.group_names == ("special", "note", "voice", "dur", "time")
    assert (TOK.min_pitch, TOK.max_pitch) == (34, 83)  # corpus 36..81 plus 2 on each side
    assert TOK.note_ids == range(5, 55) and TOK.voice_ids == range(55, 59)
    assert TOK.dur_ids == range(59, 80) and TOK.time_ids == range(80, 93)
    assert len(vocab) == TOK.vocab_size == 93
    assert _names(TOK, [TOK.note_id(60), TOK.note_id(61), TOK.note_ids[0], TOK.note_ids[-1]]) == [
        "<NOTE:C4>", "<NOTE:C#4>", "<NOTE:A#1>", "<NOTE:B5>",
    ]  # fmt: skip
    assert _names(TOK, list(TOK.voice_ids)) == ["<VOICE:1>", "<VOICE:2>", "<VOICE:3>", "<VOICE:4>"]
    assert vocab.token_to_id("<DUR:1.0>") in TOK.dur_ids
    assert vocab.id_to_token(TOK.time_ids[0]) == "<TIME:+0.0>"
    assert vocab.id_to_token(TOK.time_ids[2]) == "<TIME:+0.25>"
    assert (TOK.durations, TOK.time_steps, TOK.grid) == (
        DEFAULT_DURATIONS,
        DEFAULT_TIME_STEPS,
        0.125,
    )
    assert isinstance(TOK, Tokenizer)


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_note_ids_are_chromatic(name: str) -> None:
    tok = TOKENIZERS[name]
    for k, pitch in enumerate(range(tok.min_pitch, tok.max_pitch + 1)):
        assert tok.note_id(pitch) == tok.note_ids.start + k
        assert tok.pitch_of(tok.note_ids.start + k) == pitch


def test_time_values_per_id() -> None:
    values = TOK.time_values()
    assert len(values) == len(TOK.vocab)
    assert [values[i] for i in TOK.time_ids] == list(DEFAULT_TIME_STEPS)
    assert all(values[i] == 0.0 for i in range(len(values)) if i not in TOK.time_ids)


def test_key_tokens_add_one_group_after_the_others() -> None:
    assert KEYED.key_tokens and not TOK.key_tokens
    assert KEYED.vocab.group_names == ("special", "note", "voice", "dur", "time", "key")
    assert KEYED.vocab.tokens[: len(TOK.vocab)] == TOK.vocab.tokens  # every other id as before
    assert KEYED.key_ids == range(93, 105) and len(KEYED.vocab) == 105
    assert _names(KEYED, list(KEYED.key_ids)) == [f"<KEY:{k}>" for k in range(-6, 6)]
    assert TOK.key_ids == range(93, 93)  # empty without the option
    values = KEYED.time_values()
    assert len(values) == 105 and all(values[i] == 0.0 for i in KEYED.key_ids)
    assert len(KEYED.duration_values()) == 105


@pytest.mark.parametrize(
    "key, token",
    [(0, "<KEY:0>"), (1, "<KEY:1>"), (-1, "<KEY:-1>"), (5, "<KEY:5>"), (-5, "<KEY:-5>"),
     (6, "<KEY:-6>"), (-6, "<KEY:-6>"), (7, "<KEY:-5>"), (-7, "<KEY:5>")],
)  # fmt: skip
def test_key_id_spells_a_signature_with_at_most_6_flats_or_5_sharps(key: int, token: str) -> None:
    assert KEYED.vocab.id_to_token(KEYED.key_id(key)) == token


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"pitch": 128}, r"pitch must be an int in \[0, 127\], got 128"),
        ({"voice": 0}, "voice must be an int >= 1, got 0"),
        ({"onset": -1.0}, "onset must be a finite number >= 0, got -1.0"),
        ({"duration": 0.0}, "duration must be a finite number > 0, got 0.0"),
        ({"bar": -1}, "bar must be an int >= 0, got -1"),
        ({"key": 8}, r"key must be an int in \[-7, 7\], got 8"),
        ({"fermata": 1}, "fermata must be a bool, got 1"),
    ],
)
def test_note_event_names_the_field_that_is_wrong(kwargs: dict, match: str) -> None:
    fields = {"pitch": 60, "voice": 1, "onset": 0.0, "duration": 1.0, **kwargs}
    with pytest.raises(ValueError, match=f"NoteEvent: {match}"):
        NoteEvent(**fields)


def test_key_id_errors_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="has no KEY tokens"):
        TOK.key_id(0)
    with pytest.raises(ValueError, match="key must be an int in \\[-7, 7\\], got 8"):
        KEYED.key_id(8)
    with pytest.raises(ValueError, match="key_tokens must be a bool, got 1"):
        MusicTokenizer(key_tokens=1)  # type: ignore[arg-type]


def test_encode_opens_with_the_first_events_key_and_decode_gives_it_to_every_event() -> None:
    piece = [NoteEvent(62, 1, 2.0, 1.0, key=2), NoteEvent(60, 2, 0.0, 2.0, key=7)]
    ids = KEYED.encode(piece)
    assert _names(KEYED, ids[:3]) == ["<START>", "<KEY:-5>", "<NOTE:C4>"]  # C# major is Db
    assert [e.key for e in KEYED.decode(ids)] == [-5, -5]  # one key: a later change is dropped
    assert KEYED.decode(ids) == KEYED.quantize(piece)
    assert _names(KEYED, KEYED.encode([])) == ["<START>", "<KEY:0>", "<END>"]
    assert _names(KEYED, KEYED.encode([NoteEvent(60, 1, 0.0, 1.0, fermata=True)]))[:3] == [
        "<START>", "<KEY:0>", "<NOTE:C4>",
    ]  # fmt: skip
    body = KEYED.encode(piece, add_start=False)  # a window body has no KEY token
    assert body == ids[2:] and [e.key for e in KEYED.decode(body)] == [0, 0]
    assert [e.key for e in KEYED.decode(ids[1:])] == [-5, -5]  # <START> is optional
    assert TOK.encode(piece) == [TOK.start_id, *ids[2:]]  # without the option: as before
    assert [e.key for e in TOK.decode(TOK.encode(piece))] == [0, 0]


def test_fermata_tokens_add_one_token_after_the_others() -> None:
    both = TOKENIZERS["keyed_fermatas"]
    assert HELD.fermata_tokens and not TOK.fermata_tokens and not KEYED.fermata_tokens
    assert HELD.vocab.group_names == ("special", "note", "voice", "dur", "time", "fermata")
    assert HELD.vocab.tokens[:93] == TOK.vocab.tokens and HELD.fermata_ids == range(93, 94)
    assert _names(HELD, list(HELD.fermata_ids)) == ["<FERMATA>"] and len(HELD.vocab) == 94
    assert both.vocab.group_names[-2:] == ("key", "fermata")  # KEY ids do not move
    assert both.fermata_ids == range(len(both.vocab) - 1, len(both.vocab))
    assert both.key_ids.stop == both.fermata_ids.start
    assert TOK.fermata_ids == range(93, 93) and KEYED.fermata_ids == range(105, 105)
    assert len(HELD.time_values()) == 94 and HELD.time_values()[93] == 0.0
    assert "fermata_tokens=True" in repr(HELD) and "fermata" not in repr(TOK)
    with pytest.raises(ValueError, match="fermata_tokens must be a bool, got 1"):
        MusicTokenizer(fermata_tokens=1)  # type: ignore[arg-type]
    with pytest.raises(IndexError, match="id 93 at position 1 is not a token id"):
        TOK.decode([TOK.start_id, 93])  # without the option there is no such id


def test_encode_marks_each_onset_with_a_fermata_once_after_its_bar_lines() -> None:
    piece = [
        NoteEvent(60, 1, 0.0, 1.0),
        NoteEvent(48, 4, 0.0, 2.0),
        NoteEvent(62, 1, 1.0, 1.0, fermata=True),  # a fermata on one voice of the onset
        NoteEvent(55, 4, 4.0, 1.0, bar=1),
        NoteEvent(67, 1, 4.0, 1.0, bar=1, fermata=True),  # after a bar line
        NoteEvent(64, 1, 6.0, 1.0, bar=1, fermata=True),
    ]
    ids = HELD.encode(piece)
    assert _names(HELD, ids) == [
        "<START>",
        "<NOTE:C4>", "<VOICE:1>", "<DUR:1.0>", "<TIME:+0.0>",
        "<NOTE:C3>", "<VOICE:4>", "<DUR:2.0>", "<TIME:+1.0>",
        "<FERMATA>", "<NOTE:D4>", "<VOICE:1>", "<DUR:1.0>", "<TIME:+3.0>",
        "<BAR>", "<FERMATA>", "<NOTE:G4>", "<VOICE:1>", "<DUR:1.0>", "<TIME:+0.0>",
        "<NOTE:G3>", "<VOICE:4>", "<DUR:1.0>", "<TIME:+2.0>",
        "<FERMATA>", "<NOTE:E4>", "<VOICE:1>", "<DUR:1.0>", "<TIME:+0.0>", "<END>",
    ]  # fmt: skip
    # Decoding gives the mark to every note of its onset, and to no other.
    assert [(e.pitch, e.fermata) for e in HELD.decode(ids)] == [
        (60, False), (48, False), (62, True), (67, True), (55, True), (64, True),
    ]  # fmt: skip
    assert HELD.decode(ids) == HELD.quantize(piece)
    assert TOK.encode(piece) == [i for i in ids if i not in HELD.fermata_ids]  # as before
    assert not any(e.fermata for e in TOK.decode(TOK.encode(piece)))
    rest_first = HELD.encode([NoteEvent(60, 1, 1.0, 1.0, fermata=True)])
    assert _names(HELD, rest_first[:4]) == ["<START>", "<REST>", "<TIME:+1.0>", "<FERMATA>"]


# -- the stream, by hand -------------------------------------------------------------------


def test_encode_example_by_hand() -> None:
    piece = [
        NoteEvent(64, 2, 1.0, 1.0, bar=5),  # after one beat of silence; unsorted input
        NoteEvent(60, 1, 1.0, 0.5, bar=5),
        NoteEvent(67, 1, 2.0, 2.0, bar=5),
        NoteEvent(65, 1, 12.5, 1.0, bar=7),  # 10.5 beats later, two bars on
        NoteEvent(48, 4, 12.5, 0.3, bar=7),  # 0.3 snaps to 0.25
    ]
    assert _names(TOK, TOK.encode(piece)) == [
        "<START>", "<REST>", "<TIME:+1.0>",
        "<NOTE:C4>", "<VOICE:1>", "<DUR:0.5>", "<TIME:+0.0>",
        "<NOTE:E4>", "<VOICE:2>", "<DUR:1.0>", "<TIME:+1.0>",
        "<NOTE:G4>", "<VOICE:1>", "<DUR:2.0>", "<TIME:+8.0>", "<REST>", "<TIME:+2.0>",
        "<REST>", "<TIME:+0.5>", "<BAR>", "<BAR>",
        "<NOTE:F4>", "<VOICE:1>", "<DUR:1.0>", "<TIME:+0.0>",
        "<NOTE:C3>", "<VOICE:4>", "<DUR:0.25>", "<TIME:+0.0>", "<END>",
    ]  # fmt: skip
    assert TOK.decode(TOK.encode(piece)) == [
        NoteEvent(60, 1, 1.0, 0.5, 0), NoteEvent(64, 2, 1.0, 1.0, 0),
        NoteEvent(67, 1, 2.0, 2.0, 0), NoteEvent(65, 1, 12.5, 1.0, 2),
        NoteEvent(48, 4, 12.5, 0.25, 2),
    ]  # fmt: skip
    assert TOK.encode([]) == [TOK.start_id, TOK.end_id]
    window = TOK.encode(piece[1:2], add_start=False, add_end=False)
    assert _names(TOK, window) == [
        "<REST>",
        "<TIME:+1.0>",
        "<NOTE:C4>",
        "<VOICE:1>",
        "<DUR:0.5>",
        "<TIME:+0.0>",
    ]


@pytest.mark.parametrize(
    "event, onset, duration",
    [
        (NoteEvent(60, 1, 0.0625, 1.0), 0.125, 1.0),  # half a grid step rounds up
        (NoteEvent(60, 1, 0.06, 1.0), 0.0, 1.0),
        (NoteEvent(60, 1, 1.0, 0.3125), 1.0, 0.25),  # a tie between 0.25 and 0.375 -> shorter
        (NoteEvent(60, 1, 1.0, 0.32), 1.0, 0.375),
        (NoteEvent(60, 1, 1.0, 0.01), 1.0, 0.125),  # below the shortest
        (NoteEvent(60, 1, 1.0, 40.0), 1.0, 16.0),  # above the longest
    ],
)
def test_quantize_snaps_by_hand(event: NoteEvent, onset: float, duration: float) -> None:
    (got,) = TOK.quantize([event])
    assert (got.onset, got.duration) == (onset, duration)


def test_quantize_bars_fit_the_stream() -> None:
    piece = [
        NoteEvent(60, 1, 0.0, 1.0, bar=3),
        NoteEvent(62, 2, 0.0, 1.0, bar=4),  # a chord over two bars: it takes the later one
        NoteEvent(64, 1, 1.0, 1.0, bar=2),  # bars never go back
        NoteEvent(65, 1, 2.0, 1.0, bar=6, key=-3),
    ]
    assert [(e.bar, e.key) for e in TOK.quantize(piece)] == [(0, 0), (0, 0), (0, 0), (2, 0)]


# -- laws ----------------------------------------------------------------------------------


@given(case=tokenizer_and_events())
def test_decode_of_encode_is_quantize(case: tuple[MusicTokenizer, list[NoteEvent]]) -> None:
    tok, events = case
    assert tok.decode(tok.encode(events)) == tok.quantize(events)


@given(case=tokenizer_and_events())
def test_quantize_is_idempotent_and_on_the_grid(
    case: tuple[MusicTokenizer, list[NoteEvent]],
) -> None:
    tok, events = case
    piece = tok.quantize(events)
    assert tok.quantize(piece) == piece
    assert piece == sort_events(piece) and len(piece) == len(events)
    key = 0  # without KEY tokens; with them, the first encoded event's, spelt in -6..5
    if tok.key_tokens and events:
        first = min(
            range(len(events)),
            key=lambda k: (math.floor(events[k].onset / tok.grid + 0.5), events[k].voice,
                           events[k].pitch, k),
        )  # fmt: skip
        key = (events[first].key + 6) % 12 - 6
    assert all(e.duration in tok.durations and e.key == key for e in piece)
    assert all(e.onset == round(e.onset / tok.grid) * tok.grid for e in piece)
    # Fermatas: none without FERMATA tokens; with them, every note of an onset where any of
    # the input's notes (snapped to the grid) had one.
    held = {math.floor(e.onset / tok.grid + 0.5) * tok.grid for e in events if e.fermata}
    assert all(e.fermata == (tok.fermata_tokens and e.onset in held) for e in piece)
    if piece:
        assert piece[0].bar == 0
    for a, b in zip(piece, piece[1:], strict=False):
        assert a.bar <= b.bar and (a.onset < b.onset or a.bar == b.bar)


@given(case=tokenizer_and_events())
def test_encoded_streams_follow_the_grammar(case: tuple[MusicTokenizer, list[NoteEvent]]) -> None:
    tok, events = case
    ids = tok.encode(events)
    for k in range(len(ids)):
        assert ids[k] in tok.allowed_next(ids[:k]), (k, _names(tok, ids))
    assert tok.allowed_next(ids) == [tok.pad_id]
    assert tok.allowed_next([*ids, tok.pad_id, tok.pad_id]) == [tok.pad_id]


@given(case=tokenizer_and_events())
def test_time_values_sum_to_the_last_onset(case: tuple[MusicTokenizer, list[NoteEvent]]) -> None:
    tok, events = case
    values = tok.time_values()
    piece = tok.quantize(events)
    clock = sum(values[i] for i in tok.encode(events))
    assert clock == pytest.approx(piece[-1].onset if piece else 0.0, abs=1e-9)


@st.composite
def token_walks(draw: st.DrawFn) -> tuple[MusicTokenizer, list[int], bool]:
    """A stream from <START>: mostly tokens the grammar allows, sometimes any token.

    Returns the tokenizer, the ids, and whether every token up to <END> was allowed (a
    <PAD> is allowed anywhere: decode skips it and the grammar looks through it).
    """
    tok = TOKENIZERS[draw(st.sampled_from(sorted(TOKENIZERS)))]
    ids, legal, ended = [tok.start_id], True, False
    for _ in range(draw(st.integers(0, 40))):
        allowed = tok.allowed_next(ids)
        pick = draw(st.integers(0, 10**6))
        if draw(st.integers(0, 19)):  # 19 in 20: a legal token
            ids.append(allowed[pick % len(allowed)])
        else:
            token = pick % len(tok.vocab)
            legal &= ended or token in allowed or token == tok.pad_id
            ids.append(token)
        ended |= ids[-1] == tok.end_id and (legal or ended)
    return tok, ids, legal


@given(walk=token_walks())
def test_decode_accepts_exactly_what_allowed_next_allows(
    walk: tuple[MusicTokenizer, list[int], bool],
) -> None:
    tok, ids, legal = walk
    if not legal:
        with pytest.raises(ValueError, match=r"MusicTokenizer.decode: token .* at position \d+"):
            tok.decode(ids)
        return
    piece = tok.decode(ids)
    assert tok.quantize(piece) == piece
    assert tok.decode(tok.encode(piece)) == piece


# -- grammar -------------------------------------------------------------------------------

T0, T1, T2 = (TOK.time_ids[0], TOK.vocab.token_to_id("<TIME:+1.0>"), TOK.time_ids[-1])
N, V, D = TOK.note_ids[0], TOK.voice_ids[0], TOK.dur_ids[0]
S, E, B, R, P = TOK.start_id, TOK.end_id, TOK.bar_id, TOK.rest_id, TOK.pad_id
NOTES, VOICES, DURS, TIMES_ALL = (
    list(TOK.note_ids), list(TOK.voice_ids), list(TOK.dur_ids), list(TOK.time_ids)
)  # fmt: skip


@pytest.mark.parametrize(
    "prefix, allowed",
    [
        ([], [S]),
        ([P, P], [S]),
        ([S], [E, R, *NOTES]),
        ([P, S], [E, R, *NOTES]),
        ([S, N], VOICES),
        ([S, N, V], DURS),
        ([S, N, V, D], TIMES_ALL),
        ([S, N, V, D, T0], [E, *NOTES]),  # a chord goes on, or the piece ends
        ([S, N, V, D, T1], [B, R, *NOTES]),
        ([S, R], TIMES_ALL[1:]),  # a rest must advance time
        ([S, R, T1], [R, *NOTES]),  # no bar line before the first note
        ([S, R, T2, R, T1], [R, *NOTES]),
        ([S, N, V, D, T2, R], TIMES_ALL[1:]),
        ([S, N, V, D, T2, R, T1], [B, R, *NOTES]),
        ([S, N, V, D, T2, R, T2, R, T1], [B, R, *NOTES]),
        ([S, N, V, D, T1, B], [B, *NOTES]),
        ([S, N, V, D, T0, E], [P]),
        ([S, N, V, D, T0, E, P, P], [P]),
        ([R, T1], [R, *NOTES]),  # a window without <START> starts before the first note
    ],
)
def test_allowed_next_by_state(prefix: list[int], allowed: list[int]) -> None:
    assert sorted(TOK.allowed_next(prefix)) == sorted(allowed)


K, KEYS_ALL = KEYED.key_ids[6], list(KEYED.key_ids)  # <KEY:0>; the other ids are TOK's


@pytest.mark.parametrize(
    "prefix, allowed",
    [
        ([], [S]),
        ([S], KEYS_ALL),  # only a key signature may open the piece
        ([P, S, P], KEYS_ALL),
        ([S, K], [E, R, *NOTES]),
        ([S, K, R, T1], [R, *NOTES]),  # still before the first note: no bar line
        ([S, K, R, T2, R, T1], [R, *NOTES]),
        ([K, R, T1], [R, *NOTES]),  # a window without <START>
        ([S, K, N, V, D, T1], [B, R, *NOTES]),
        ([S, K, N, V, D, T2, R, T1], [B, R, *NOTES]),
        ([S, K, N, V, D, T0], [E, *NOTES]),
        ([S, K, N, V, D, T0, E], [P]),
    ],
)
def test_allowed_next_with_key_tokens_by_state(prefix: list[int], allowed: list[int]) -> None:
    assert sorted(KEYED.allowed_next(prefix)) == sorted(allowed)


F = HELD.fermata_ids[0]


@pytest.mark.parametrize(
    "prefix, allowed",
    [
        ([S], [E, R, F, *NOTES]),  # a fermata on the first onset
        ([S, R, T1], [R, F, *NOTES]),
        ([S, F], NOTES),  # the onset's first note, and nothing else
        ([S, N, V, D, T1], [B, R, F, *NOTES]),
        ([S, N, V, D, T1, B], [B, F, *NOTES]),  # bar lines first, then the fermata
        ([S, N, V, D, T2, R, T1], [B, R, F, *NOTES]),
        ([S, N, V, D, T0], [E, *NOTES]),  # never inside a chord
        ([S, F, N, V, D, T0], [E, *NOTES]),
        ([F, N], VOICES),  # a window that opens on a fermata
    ],
)
def test_allowed_next_with_fermata_tokens_by_state(prefix: list[int], allowed: list[int]) -> None:
    assert sorted(HELD.allowed_next(prefix)) == sorted(allowed)


@pytest.mark.parametrize(
    "ids, match",
    [
        ([S, F, F], r"token <FERMATA> \(id 93\) at position 2 cannot follow <FERMATA>; "
                    r"allowed there: <NOTE:\*>"),
        ([S, F, B], "position 2 cannot follow <FERMATA>"),
        ([S, F, E], "position 2 cannot follow <FERMATA>"),
        ([S, N, V, D, T0, F], r"position 5 cannot follow <TIME:\+0.0>"),
        ([S, N, V, D, F], "position 4 cannot follow <DUR:0.125>"),
    ],
)  # fmt: skip
def test_decode_with_fermata_tokens_refuses_a_fermata_inside_an_onset(
    ids: list[int], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        HELD.decode(ids)


@given(case=tokenizer_and_events())
def test_fermata_tokens_stand_before_the_first_note_of_marked_onsets_only(
    case: tuple[MusicTokenizer, list[NoteEvent]],
) -> None:
    _, events = case
    piece = HELD.quantize(events)
    ids = HELD.encode(piece)
    marks = [k for k, i in enumerate(ids) if i == F]
    assert all(ids[k + 1] in HELD.note_ids for k in marks)
    assert len(marks) == len({e.onset for e in piece if e.fermata})


@given(case=tokenizer_and_events())
def test_key_tokens_are_allowed_right_after_start_and_nowhere_else(
    case: tuple[MusicTokenizer, list[NoteEvent]],
) -> None:
    _, events = case
    ids = KEYED.encode([e for e in events if e.voice <= 2])
    keys = set(KEYED.key_ids)
    where = [k for k in range(len(ids) + 1) if keys & set(KEYED.allowed_next(ids[:k]))]
    assert where == [1] and ids[1] in keys


class _CountingList(list):
    """A list that counts element reads, to check that the grammar reads a bounded suffix."""

    reads = 0

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        type(self).reads += 1
        return super().__getitem__(index)


def test_allowed_next_reads_a_bounded_suffix_of_long_prefixes() -> None:
    # Two bars of notes, chords and a long rest, repeated to 200 bars (2,201 tokens).
    bar = [NoteEvent(60, 1, 0.0, 1.0), NoteEvent(48, 4, 0.0, 2.0), NoteEvent(62, 1, 1.0, 0.5),
           NoteEvent(64, 1, 14.5, 1.0, bar=1)]  # fmt: skip
    piece = [NoteEvent(e.pitch, e.voice, e.onset + 16 * k, e.duration, e.bar + 2 * k)
             for k in range(100) for e in bar]  # fmt: skip
    ids = TOK.encode(piece)
    assert len(ids) > 2000 and ids.count(TOK.rest_id) == 200
    reads = []
    for k in range(len(ids)):
        prefix = _CountingList(ids[:k])
        _CountingList.reads = 0
        assert ids[k] in TOK.allowed_next(prefix)
        reads.append(_CountingList.reads)
    # 2 reads after a note's TIME, 4 after the TIME of its first rest pair, 2 more per pair.
    assert max(reads) == 6 and reads[-300:] == reads[-1400:-1100]


@settings(max_examples=6)
@given(
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([1.0, 20.0]),
    temperature=st.floats(0.5, 2.0),
)
@pytest.mark.parametrize("name", ["default", "keyed", "keyed_fermatas"])
def test_generation_under_the_grammar_always_decodes(
    name: str, seed: int, scale: float, temperature: float
) -> None:
    tok = TOKENIZERS[name]
    model = tiny_music_gpt(tok, seed=seed, block_size=64, scale=scale)
    prompt = torch.full((8, 1), tok.start_id)
    out = generate(
        model, prompt, 63, allowed_next=tok.allowed_next, temperature=temperature,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    assert out.shape == (8, 64)
    for row in out.tolist():  # a scaled model may end at once: empty pieces are legal too
        piece = tok.decode(row)
        assert tok.quantize(piece) == piece
        assert tok.decode(tok.encode(piece)) == piece
        if tok.key_tokens:  # the grammar drew a key first, and every note carries it
            assert row[1] in tok.key_ids
            assert all(e.key == row[1] - tok.key_ids.start - 6 for e in piece)


def test_generation_under_the_grammar_writes_notes() -> None:
    # The property above can meet models that only end or rest; this fixed one writes notes.
    model = tiny_music_gpt(TOK, seed=0, block_size=64)
    out = generate(
        model, torch.full((4, 1), TOK.start_id), 63, allowed_next=TOK.allowed_next,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert sum(len(TOK.decode(row)) for row in out.tolist()) >= 8


# -- decode --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ids, match",
    [
        ([S, N, N], r"token <NOTE:A#1> \(id 5\) at position 2 cannot follow <NOTE:A#1>; "
                    r"allowed there: <VOICE:\*>"),
        ([S, B], r"position 1 cannot follow <START>; allowed there: <END>, <NOTE:\*>, <REST>"),
        ([S, R, T1, B], r"token <BAR> \(id 3\) at position 3 cannot follow <TIME:\+1.0>"),
        ([S, N, V, D, T0, B], "position 5 cannot follow <TIME:\\+0.0>"),
        ([S, N, V, D, T1, E], "position 5"),  # a piece ends right after a chord's last note
        ([S, R, T0], r"allowed there: <TIME:\+t> with t > 0"),
        ([S, N, V, D, T0, S], "position 5"),
        ([V], "position 0 cannot follow the beginning"),
    ],
)  # fmt: skip
def test_decode_names_the_position_and_the_token(ids: list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TOK.decode(ids)


@pytest.mark.parametrize(
    "ids, match",
    [
        ([S, N], r"token <NOTE:A#1> \(id 5\) at position 1 cannot follow <START>; "
                 r"allowed there: <KEY:\*>"),
        ([S, E], "position 1 cannot follow <START>"),  # even an empty piece has a key
        ([S, K, K], r"position 2 cannot follow <KEY:0>; allowed there: <END>, <NOTE:\*>, <REST>"),
        ([S, K, N, V, D, T1, K], "position 6 cannot follow <TIME:\\+1.0>"),
        ([K, N, V, D, T0, S], "position 5"),
    ],
)  # fmt: skip
def test_decode_with_key_tokens_refuses_a_key_anywhere_but_after_start(
    ids: list[int], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        KEYED.decode(ids)


def test_decode_skips_padding_stops_at_end_and_drops_a_cut_off_event() -> None:
    piece = TOK.quantize([NoteEvent(60, 1, 0.0, 1.0), NoteEvent(62, 2, 0.5, 1.0, bar=1)])
    ids = TOK.encode(piece)
    assert TOK.decode([P, P, *ids]) == piece
    assert TOK.decode([*ids, N, N, S]) == piece  # nothing after <END> is read
    assert TOK.decode(torch.tensor(ids)) == piece
    assert TOK.decode(ids[1:]) == piece  # <START> is optional
    body = ids[:-1]
    for cut in ([N], [N, V], [N, V, D]):
        assert TOK.decode([*body, *cut]) == piece
    gap = TOK.encode([NoteEvent(60, 1, 0.0, 1.0), NoteEvent(62, 1, 10.0, 1.0)])
    assert _names(TOK, gap[4:7]) == ["<TIME:+8.0>", "<REST>", "<TIME:+2.0>"]
    assert TOK.decode(gap[:6]) == [NoteEvent(60, 1, 0.0, 1.0)]  # cut after a <REST>
    assert TOK.decode([*body, N, V, D, T0]) == sort_events(
        [*piece, NoteEvent(34, 1, 0.5, 0.125, 1)]
    )
    with pytest.raises(IndexError, match="id 93 at position 1 is not a token id"):
        TOK.decode([S, 93])


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_pitch": -1}, r"min_pitch must be an int MIDI pitch in \[0, 127\], got -1"),
        ({"max_pitch": 128}, r"max_pitch must be an int MIDI pitch in \[0, 127\], got 128"),
        ({"min_pitch": 60, "max_pitch": 59}, r"max_pitch must be >= min_pitch \(60\), got 59"),
        ({"voices": 0}, "voices must be an int >= 1, got 0"),
        ({"durations": ()}, r"durations must be a non-empty strictly increasing .* got \[\]"),
        ({"durations": (1.0, 0.5)}, r"durations must be .* got \[1.0, 0.5\]"),
        ({"durations": (0.0, 1.0)}, r"durations must be .* > 0, got \[0.0, 1.0\]"),
        ({"durations": (float("nan"),)}, "durations must be .* finite"),
        ({"time_steps": (0.25, 0.5)}, r"time_steps must be .* starting with 0.0.* \[0.25, 0.5\]"),
        ({"time_steps": (0.0,)}, r"time_steps must be .* with a nonzero one, got \[0.0\]"),
        ({"time_steps": (0.0, 0.5, 0.75)}, r"multiples of the smallest nonzero step 0.5, got 0.75"),
        ({"time_steps": "0.5"}, "time_steps must be"),
    ],
)
def test_constructor_errors_name_the_parameter(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MusicTokenizer(**kwargs)


def test_quantize_and_lookups_refuse_what_the_vocabulary_lacks() -> None:
    with pytest.raises(ValueError, match=r"events\[1\] has pitch 90 outside the tokenizer's "
                                         r"range \[34, 83\] \(A#1 to B5\)"):  # fmt: skip
        TOK.encode([NoteEvent(60, 1, 0.0, 1.0), NoteEvent(90, 1, 0.0, 1.0)])
    with pytest.raises(ValueError, match=r"events\[0\] has voice 5; .* voices 1..4"):
        TOK.quantize([NoteEvent(60, 5, 0.0, 1.0)])
    with pytest.raises(TypeError, match=r"events\[0\] must be a NoteEvent, got tuple"):
        TOK.quantize([(60, 1, 0.0, 1.0)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"pitch 33 is outside the tokenizer's range"):
        TOK.note_id(33)
    with pytest.raises(ValueError, match=r"id 4 is not a NOTE id; NOTE ids are 5..54"):
        TOK.pitch_of(4)
    with pytest.raises(ValueError, match="id 93 at position 1 is not a token id"):
        TOK.allowed_next([S, 93])


# -- files ---------------------------------------------------------------------------------


@tmp_path_ok
@given(name=st.sampled_from(sorted(TOKENIZERS)))
def test_save_load_round_trips_ids_and_grid(tmp_path: Path, name: str) -> None:
    tok = TOKENIZERS[name]
    path = tmp_path / f"{name}.json"
    tok.save(path)
    payload = json.loads(path.read_text(encoding="utf-8"))
    assert (payload["kind"], payload["format"]) == ("music", 1)
    for back in (MusicTokenizer.load(path), load_tokenizer(path), MusicTokenizer.from_dict(
        tok.to_dict())):  # fmt: skip
        assert isinstance(back, MusicTokenizer)
        assert back.vocab == tok.vocab and back.vocab.tokens == tok.vocab.tokens
        assert (back.durations, back.time_steps, back.grid) == (
            tok.durations, tok.time_steps, tok.grid
        )  # fmt: skip
        assert (back.min_pitch, back.max_pitch, back.voices) == (
            tok.min_pitch, tok.max_pitch, tok.voices
        )  # fmt: skip
        assert (back.key_tokens, back.fermata_tokens) == (tok.key_tokens, tok.fermata_tokens)
        piece = [NoteEvent(tok.max_pitch, tok.voices, 1.0, 1.0, key=3, fermata=True)]
        assert back.encode(piece) == tok.encode(piece)
    assert ("key_tokens" in payload["config"]) == tok.key_tokens  # written only when True
    assert ("fermata_tokens" in payload["config"]) == tok.fermata_tokens


def test_a_file_from_before_key_tokens_loads_without_them(tmp_path: Path) -> None:
    payload = TOK.to_dict()
    assert set(payload["config"]) == {"min_pitch", "max_pitch", "voices", "durations",
                                      "time_steps"}  # fmt: skip
    assert not MusicTokenizer.from_dict(payload).key_tokens
    keyed = KEYED.to_dict()
    assert keyed["config"]["key_tokens"] is True
    with pytest.raises(ValueError, match="key_tokens must be a bool, got 'yes'"):
        MusicTokenizer.from_dict({**keyed, "config": {**keyed["config"], "key_tokens": "yes"}})
    with pytest.raises(ValueError, match="is not the one its config builds"):
        MusicTokenizer.from_dict({**keyed, "config": payload["config"]})  # KEY ids would vanish
    held = HELD.to_dict()
    assert held["config"]["fermata_tokens"] is True and "key_tokens" not in held["config"]
    with pytest.raises(ValueError, match="fermata_tokens must be a bool, got 'no'"):
        MusicTokenizer.from_dict({**held, "config": {**held["config"], "fermata_tokens": "no"}})
    with pytest.raises(ValueError, match="is not the one its config builds"):
        MusicTokenizer.from_dict({**held, "config": payload["config"]})


def test_tokenizer_files_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "tok.json"
    TOK.save(path)
    with pytest.raises(ValueError, match="holds a 'music' tokenizer, not 'char'"):
        CharTokenizer.load(path)
    payload = TOK.to_dict()
    other = MusicTokenizer(voices=3).vocab.to_dict()
    with pytest.raises(ValueError, match="is not the one its config builds"):
        MusicTokenizer.from_dict({**payload, "vocab": other})
    with pytest.raises(ValueError, match="unsupported format 2"):
        MusicTokenizer.from_dict({**payload, "format": 2})
    with pytest.raises(ValueError, match="expected kind 'music', got 'char'"):
        MusicTokenizer.from_dict({**payload, "kind": "char"})
    with pytest.raises(ValueError, match="needs 'vocab' and a 'config'"):
        MusicTokenizer.from_dict({**payload, "config": {"voices": 4}})
    with pytest.raises(ValueError, match="voices must be an int >= 1, got 0"):
        MusicTokenizer.from_dict({**payload, "config": {**payload["config"], "voices": 0}})
    path.write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match="is not valid JSON"):
        MusicTokenizer.load(path)


def test_docstring_examples_run() -> None:
    result = doctest.testmod(music_module)
    assert result.attempted > 0 and result.failed == 0

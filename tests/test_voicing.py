"""VoiceLeading: one note per voice at a time and, with fill, every voice always sounding."""

from __future__ import annotations

import doctest
import random
from itertools import pairwise

import pytest
import torch
from _music_models import tiny_music_gpt
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_kit.sampling import generate
from transformer_kit.tokenization import MusicTokenizer, NoteEvent, VoiceLeading
from transformer_kit.tokenization import voicing as voicing_module
from transformer_kit.tokenization.events import Piece

TOK = MusicTokenizer()
TWO = MusicTokenizer(min_pitch=55, max_pitch=79, voices=2, durations=(0.5, 1.0, 2.0),
                     time_steps=(0.0, 0.5, 1.0, 2.0))  # fmt: skip
KEYED = MusicTokenizer(key_tokens=True)  # TOK's ids, then <KEY:-6>..<KEY:5>
HELD = MusicTokenizer(fermata_tokens=True)  # TOK's ids, then <FERMATA>


def _note(tok: MusicTokenizer, pitch: int, voice: int, duration: float, step: float) -> list[int]:
    """The four tokens of one note: <NOTE> <VOICE> <DUR> <TIME:+step>."""
    dur = tok.dur_ids.start + tok.durations.index(duration)
    time = tok.time_ids.start + tok.time_steps.index(step)
    return [tok.note_id(pitch), tok.voice_ids.start + voice - 1, dur, time]


def _chord(durations: list[float]) -> list[int]:
    """<START> and one note per voice at time 0, the last one without its <TIME>."""
    ids = [TOK.start_id]
    for voice, duration in enumerate(durations, start=1):
        ids += _note(TOK, 60 + voice, voice, duration, 0.0)
    return ids[:-1]


def _times(tok: MusicTokenizer, ids: list[int]) -> list[float]:
    return [tok.time_steps[i - tok.time_ids.start] for i in ids if i in tok.time_ids]


def test_doctest() -> None:
    assert doctest.testmod(voicing_module).failed == 0


def test_a_voice_that_still_sounds_is_not_offered() -> None:
    ids = [TOK.start_id, *_note(TOK, 60, 1, 1.0, 0.0), *_note(TOK, 64, 3, 2.0, 0.0)]
    ids.append(TOK.note_id(67))  # the next note's voice: 1 and 3 hold notes at time 0
    free = [TOK.voice_ids.start + 1, TOK.voice_ids.start + 3]  # voices 2 and 4
    assert VoiceLeading(TOK)(ids) == VoiceLeading(TOK, fill=False)(ids) == free


def test_fill_moves_time_no_further_than_the_first_end() -> None:
    ids = _chord([1.0, 2.0, 2.0, 0.5])  # voice 4 ends first, at 0.5
    # No +0.0: the chord is full, and its voices end at different times, so it may not end.
    assert _times(TOK, VoiceLeading(TOK)(ids)) == [0.125, 0.25, 0.375, 0.5]
    # mono leaves time free; the grammar alone offers every step
    assert VoiceLeading(TOK, fill=False)(ids) == TOK.allowed_next(ids)


def test_fill_holds_time_while_a_voice_is_silent() -> None:
    ids = _chord([1.0, 2.0, 2.0])  # voice 4 has no note yet
    assert _times(TOK, VoiceLeading(TOK)(ids)) == [0.0]
    assert len(_times(TOK, VoiceLeading(TOK, fill=False)(ids))) == len(TOK.time_steps)


def test_with_every_voice_busy_only_a_rest_moves_on() -> None:
    ids = _chord([1.0, 1.0, 1.0, 1.0]) + [TOK.time_ids.start + TOK.time_steps.index(0.5)]
    # At 0.5 every voice sounds: no note, and no bar line (after <BAR> only notes may follow).
    for rule in (VoiceLeading(TOK), VoiceLeading(TOK, fill=False)):
        assert rule(ids) == [TOK.rest_id]
    # The rest may move time up to the end of the notes (1.0), with fill.
    assert _times(TOK, VoiceLeading(TOK)([*ids, TOK.rest_id])) == [0.125, 0.25, 0.375, 0.5]


def _held_chord(durations: list[float], *, marked: bool) -> list[int]:
    """<START>, optionally <FERMATA>, and one HELD note per voice at time 0 (the last without
    its <TIME>)."""
    ids = _chord(durations)  # TOK's ids are HELD's
    return [ids[0], HELD.fermata_ids.start, *ids[1:]] if marked else ids


def test_end_on_fermata_ends_a_piece_only_on_a_marked_chord() -> None:
    time0, beat = HELD.time_ids.start, HELD.time_ids.start + HELD.time_steps.index(1.0)
    plain, cadence = VoiceLeading(HELD), VoiceLeading(HELD, end_on_fermata=True)
    unmarked, marked = _held_chord([1.0] * 4, marked=False), _held_chord([1.0] * 4, marked=True)
    assert time0 in plain(unmarked) and time0 not in cadence(unmarked)  # it could only end
    assert time0 in cadence(marked) and cadence([*marked, time0]) == [HELD.end_id]
    # The mark belongs to its onset: once time moves, the next chord is unmarked again.
    again = [*marked, beat] + _chord([1.0] * 4)[1:]
    assert time0 not in cadence(again) and time0 in plain(again)
    # A maximum ends the piece at the first marked chord, not at the first aligned one.
    assert VoiceLeading(HELD, max_notes=4)(unmarked) == [time0]
    assert time0 not in VoiceLeading(HELD, max_notes=4, end_on_fermata=True)(unmarked)
    assert VoiceLeading(HELD, max_notes=4, end_on_fermata=True)(marked) == [time0]
    with pytest.raises(ValueError, match="end_on_fermata must be a bool, got 1"):
        VoiceLeading(HELD, end_on_fermata=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"end_on_fermata=True needs a tokenizer with FERMATA"):
        VoiceLeading(TOK, end_on_fermata=True)


# Two voices, one length, two time steps: voices often end together, so walks can end.
SMALL_HELD = MusicTokenizer(min_pitch=60, max_pitch=64, voices=2, durations=(1.0, 2.0),
                            time_steps=(0.0, 1.0), fermata_tokens=True)  # fmt: skip


def _onset_is_marked(tok: MusicTokenizer, ids: list[int]) -> bool:
    """Whether the last onset of a stream opened with <FERMATA>, read back from its end."""
    for i in reversed(ids):
        if i in tok.fermata_ids:
            return True
        if i in (tok.start_id, tok.bar_id, tok.rest_id) or (
            i in tok.time_ids and i != tok.time_ids.start
        ):
            return False
    return False


@pytest.mark.parametrize("fill", [True, False])
@pytest.mark.parametrize("tok", [HELD, SMALL_HELD], ids=["chorale", "small"])
def test_end_on_fermata_offers_end_only_at_marked_onsets_on_random_walks(
    fill: bool, tok: MusicTokenizer
) -> None:
    rng = random.Random(0)
    ended = differs = 0  # walks that ended; prefixes where the rule changes what is offered
    for _ in range(60):
        cadence = VoiceLeading(tok, fill=fill, min_notes=4, end_on_fermata=True)
        plain = VoiceLeading(tok, fill=fill, min_notes=4)
        ids = [tok.start_id]
        while len(ids) < 200 and ids[-1] != tok.end_id:
            allowed = cadence(ids)
            if tok.end_id in allowed:
                assert _onset_is_marked(tok, ids), ids
            differs += set(plain(ids)) != set(allowed)
            marks = [i for i in allowed if i in tok.fermata_ids or i == tok.end_id]
            ids.append(marks[0] if marks and rng.random() < 0.3 else rng.choice(allowed))
        ended += ids[-1] == tok.end_id
        assert tok.decode(ids) == tok.quantize(tok.decode(ids))
    if tok is SMALL_HELD:  # the rule was met many times, and it changes what is offered
        assert ended >= 10 and differs > 0


def test_a_fermata_is_offered_only_where_a_note_may_start() -> None:
    fermata = HELD.fermata_ids.start
    busy = _chord([1.0, 1.0, 1.0, 1.0]) + [HELD.time_ids.start + HELD.time_steps.index(0.5)]
    for rule in (VoiceLeading(HELD), VoiceLeading(HELD, fill=False)):
        assert rule(busy) == [HELD.rest_id]  # after <FERMATA> only a note may follow
    free = _chord([1.0, 1.0, 1.0, 1.0]) + [HELD.time_ids.start + HELD.time_steps.index(1.0)]
    after = VoiceLeading(HELD)([*free, fermata])
    assert fermata in VoiceLeading(HELD)(free) and after == list(HELD.note_ids)
    assert fermata not in VoiceLeading(HELD)(free[:-1])  # inside the chord


def test_a_full_chord_continued_can_only_end() -> None:
    ids = _chord([1.0, 1.0, 1.0, 1.0]) + [TOK.time_ids.start]  # <TIME:+0.0>: same onset
    assert VoiceLeading(TOK)(ids) == [TOK.end_id]


def test_rest_first_only_without_fill() -> None:
    start = [TOK.start_id]
    assert TOK.rest_id not in VoiceLeading(TOK)(start)
    assert VoiceLeading(TOK, fill=False)(start) == TOK.allowed_next(start)


def test_falls_back_to_the_grammar_when_the_rules_leave_nothing() -> None:
    # A prompt that already broke the rules: a fifth note at time 0 with every voice taken.
    # No voice is free for it, so the grammar's own choices come back and the stream stays
    # decodable.
    ids = _chord([1.0, 1.0, 1.0, 1.0]) + [TOK.time_ids.start, TOK.note_id(70)]
    assert VoiceLeading(TOK)(ids) == TOK.allowed_next(ids) == list(TOK.voice_ids)


def test_rejects_a_tokenizer_of_another_kind() -> None:
    with pytest.raises(TypeError, match="VoiceLeading: tokenizer must be a MusicTokenizer"):
        VoiceLeading(object())  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_rejects_a_bad_min_notes(bad: object) -> None:
    with pytest.raises(
        ValueError, match=f"VoiceLeading: min_notes must be an int >= 0, got {bad!r}"
    ):
        VoiceLeading(TOK, min_notes=bad)  # type: ignore[arg-type]


def test_max_notes_forces_no_time_step_that_could_not_end_the_piece() -> None:
    # A prompt that broke the rules: voice 1 starts again while its half note still sounds.
    # The scan then takes the new note's end (1.0) over the old one (2.0), so after +0.0 the
    # voices end at 1.0 and 2.0 and <END> is refused: forcing +0.0 would not end the piece.
    ids = [TWO.start_id, *_note(TWO, 60, 1, 2.0, 0.0), *_note(TWO, 64, 2, 2.0, 0.0)]
    ids += _note(TWO, 62, 1, 1.0, 0.0)[:-1]
    assert VoiceLeading(TWO, max_notes=3)(ids) == VoiceLeading(TWO)(ids)
    assert len(VoiceLeading(TWO)(ids)) > 1


@pytest.mark.parametrize(("bad", "least"), [(0, 0), (-1, 0), (True, 0), (2.5, 0), ("3", 0), (4, 5)])
def test_rejects_a_bad_max_notes(bad: object, least: int) -> None:
    with pytest.raises(
        ValueError,
        match=rf"VoiceLeading: max_notes must be None or an int >= max\(1, min_notes\) "
        rf"\(min_notes={least}\), got {bad!r}",
    ):
        VoiceLeading(TOK, min_notes=least, max_notes=bad)  # type: ignore[arg-type]


def test_max_notes_ends_the_piece_at_the_first_chance() -> None:
    time0 = TOK.time_ids.start
    full = _chord([1.0, 1.0, 1.0, 1.0])  # 4 notes, the last waiting for its <TIME>
    # Below max_notes nothing changes: time may move on, or the chord end the piece.
    assert VoiceLeading(TOK, max_notes=5)(full) == VoiceLeading(TOK)(full)
    assert len(_times(TOK, VoiceLeading(TOK)(full))) > 1
    # At max_notes the chord's voices end together: only the ending is left, then <END>.
    assert VoiceLeading(TOK, max_notes=4)(full) == [time0]
    assert VoiceLeading(TOK, max_notes=4)([*full, time0]) == [TOK.end_id]
    assert VoiceLeading(TOK, max_notes=2)(full) == [time0]  # past it too
    # No chance yet: a chord that can still grow keeps its free voice (+0.0 leads to a note,
    # not to <END>), and a ragged chord (with fill) may not end.
    three = _chord([1.0, 1.0, 1.0])
    assert VoiceLeading(TOK, max_notes=3)(three) == VoiceLeading(TOK)(three) == [time0]
    grown = VoiceLeading(TOK, max_notes=3)([*three, time0])
    assert TOK.end_id not in grown and any(i in TOK.note_ids for i in grown)
    ragged = _chord([1.0, 1.0, 1.0, 0.5])
    assert VoiceLeading(TOK, max_notes=4)(ragged) == VoiceLeading(TOK)(ragged)
    # Without fill the ragged chord may end the piece, so at max_notes it does.
    assert VoiceLeading(TOK, fill=False, max_notes=4)(ragged) == [time0]
    assert VoiceLeading(TOK, fill=False, max_notes=4)([*ragged, time0]) == [TOK.end_id]


def test_min_notes_keeps_a_full_chord_from_ending_the_piece() -> None:
    ids = _chord([1.0, 1.0, 1.0, 1.0])  # the 4th note waits for its <TIME>
    assert _times(TOK, VoiceLeading(TOK, min_notes=4)(ids))[0] == 0.0  # 4 notes: may end
    # With 5 required, <TIME:+0.0> (which could only lead to <END>) is gone: time must move.
    assert _times(TOK, VoiceLeading(TOK, min_notes=5)(ids)) == [0.125, 0.25, 0.375, 0.5, 0.75, 1.0]
    # A chord that can still grow keeps <TIME:+0.0>, and after it <END> is gone.
    three = _chord([1.0, 1.0, 1.0])
    assert _times(TOK, VoiceLeading(TOK, min_notes=5)(three)) == [0.0]
    assert TOK.end_id not in VoiceLeading(TOK, min_notes=5)([*three, TOK.time_ids.start])
    assert TOK.end_id not in VoiceLeading(TOK, min_notes=1)([TOK.start_id])
    assert TOK.end_id in VoiceLeading(TOK)([TOK.start_id])


def test_fill_ends_a_piece_only_where_every_voice_ends_together() -> None:
    ragged = _chord([1.0, 1.0, 1.0, 0.5])  # a full chord whose bass ends first
    # The chord cannot grow, and it may not end the piece: time must move, at most to 0.5.
    assert _times(TOK, VoiceLeading(TOK)(ragged)) == [0.125, 0.25, 0.375, 0.5]
    # Without fill the same chord may end the piece.
    assert 0.0 in _times(TOK, VoiceLeading(TOK, fill=False)(ragged))
    # A prompt that holds the ragged chord at <TIME:+0.0> anyway: no voice is free and the
    # piece may not end, so the rules leave nothing and the grammar's own choices come back.
    stuck = [*ragged, TOK.time_ids.start]
    assert VoiceLeading(TOK)(stuck) == TOK.allowed_next(stuck)
    # Once the bass is followed by a note that ends with the others, the piece may end.
    held = [*ragged, TOK.time_ids.start + TOK.time_steps.index(0.5)]
    held += _note(TOK, 48, 4, 0.5, 0.0)
    assert VoiceLeading(TOK)(held) == [TOK.end_id]  # full again, ends aligned at 1.0
    # A chord whose voices end together may end (the +0.0 that leads to <END> stays).
    assert _times(TOK, VoiceLeading(TOK)(_chord([1.0, 1.0, 1.0, 1.0])))[0] == 0.0


def _last_end(piece: Piece, voice: int) -> float:
    return max(e.onset + e.duration for e in piece if e.voice == voice)


def _overlaps(piece: Piece) -> int:
    count = 0
    for voice in {e.voice for e in piece}:
        notes = sorted((e.onset, e.onset + e.duration) for e in piece if e.voice == voice)
        count += sum(1 for a, b in pairwise(notes) if b[0] < a[1] - 1e-9)
    return count


def _silent_points(piece: Piece, voices: int, grid: float) -> list[tuple[float, int]]:
    """(time, voice) on the grid in [0, last onset) where that voice sounds no note."""
    last = max(e.onset for e in piece)
    gaps = []
    for k in range(round(last / grid)):
        x = k * grid
        for v in range(1, voices + 1):
            if not any(e.voice == v and e.onset <= x < e.onset + e.duration for e in piece):
                gaps.append((x, v))
    return gaps


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([1.0, 20.0]),
    fill=st.booleans(),
    tok=st.sampled_from([TOK, TWO, KEYED, HELD]),
    min_notes=st.sampled_from([0, 6]),
    max_notes=st.sampled_from([None, 6, 9]),
)
def test_generation_under_voice_leading_keeps_its_promises(
    seed: int, scale: float, fill: bool, tok: MusicTokenizer, min_notes: int, max_notes: int | None
) -> None:
    model = tiny_music_gpt(tok, seed=seed, block_size=96, scale=scale)
    rule = VoiceLeading(tok, fill=fill, min_notes=min_notes, max_notes=max_notes)
    free_rule = VoiceLeading(tok, fill=fill, min_notes=min_notes)  # the same without max_notes
    seen: list[list[int]] = []

    def recording(ids: list[int]) -> list[int]:
        allowed = rule(ids)
        assert set(allowed) <= set(tok.allowed_next(ids))  # never wider than the grammar
        seen.append(allowed)
        return allowed

    out = generate(
        model, torch.full((6, 1), tok.start_id), 95, allowed_next=recording,
        temperature=1.0, generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    assert seen
    for row in out.tolist():
        piece = tok.decode(row)  # raises if the stream broke the grammar
        assert _overlaps(piece) == 0
        assert (row[1] in tok.key_ids) == tok.key_tokens  # the key comes first, when there is one
        if tok.end_id in row:
            assert len(piece) >= min_notes
        if max_notes is not None:  # past max_notes the piece ends at its first chance
            stop = row.index(tok.end_id) + 1 if tok.end_id in row else len(row)
            time0 = tok.time_ids.start
            for j in range(1, stop):
                if sum(i in tok.voice_ids for i in row[:j]) < max_notes:
                    continue
                if tok.end_id in free_rule(row[:j]):
                    assert row[j] == tok.end_id
                    break
                if time0 in free_rule(row[:j]) and tok.end_id in free_rule([*row[:j], time0]):
                    assert row[j : j + 2] == [time0, tok.end_id][: len(row) - j]
                    break
        if fill and piece:
            assert min(e.onset for e in piece) == 0.0
            assert _silent_points(piece, tok.voices, tok.grid) == []
            if tok.end_id in row:  # an ended piece ends on one release of every voice
                assert len({_last_end(piece, v) for v in range(1, tok.voices + 1)}) == 1


def test_fill_samples_from_a_fixed_model_have_four_sounding_voices() -> None:
    # The property above can meet models that end at once; this fixed one writes music.
    model = tiny_music_gpt(TOK, seed=0, block_size=96)
    out = generate(
        model, torch.full((4, 1), TOK.start_id), 95, allowed_next=VoiceLeading(TOK),
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    pieces = [TOK.decode(row) for row in out.tolist()]
    assert sum(len(p) for p in pieces) >= 8
    for piece in pieces:
        if len({e.onset for e in piece}) > 1:  # time moved: every voice had a note first
            assert {e.voice for e in piece} == {1, 2, 3, 4}
            assert _silent_points(piece, 4, TOK.grid) == []


def test_overlap_and_silence_checks_see_a_broken_piece() -> None:
    # The two checks of the property above, on a piece that breaks both rules.
    piece = [NoteEvent(60, 1, 0.0, 2.0), NoteEvent(62, 1, 1.0, 1.0), NoteEvent(64, 2, 1.5, 1.0)]
    assert _overlaps(piece) == 1
    assert (0.0, 2) in _silent_points(piece, 2, 0.5)


def _walk(tok: MusicTokenizer, choices: list[int]) -> list[int]:
    """A grammatical stream from <START>: each choice picks one of the grammar's next ids."""
    ids = [tok.start_id]
    for choice in choices:
        allowed = sorted(tok.allowed_next(ids))
        ids.append(allowed[choice % len(allowed)])
    return ids


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(st.lists(st.integers(0, 10**6), max_size=60), min_size=1, max_size=4),
    fill=st.booleans(),
)
def test_remembered_prefixes_answer_as_a_fresh_scan_does(rows: list[list[int]], fill: bool) -> None:
    streams = [_walk(TOK, choices) for choices in rows]
    rule = VoiceLeading(TOK, fill=fill, min_notes=3)
    steps: list[int] = []
    advance = rule._advance

    def counted(state: voicing_module._State, ids: tuple[int, ...]) -> voicing_module._State:
        steps.append(len(ids))
        return advance(state, ids)

    rule._advance = counted  # type: ignore[method-assign]
    # Rows grow one token at a time, interleaved, as generate asks about a batch.
    for length in range(1, max(len(s) for s in streams) + 1):
        for stream in streams:
            if length <= len(stream):
                prefix = stream[:length]
                fresh = VoiceLeading(TOK, fill=fill, min_notes=3)
                assert rule(prefix) == fresh(prefix)
                assert rule._scan(prefix) == fresh._scan(prefix)
    assert set(steps) == {1}  # every prefix was one token past a remembered one


@settings(max_examples=30, deadline=None)
@given(
    choices=st.lists(st.integers(0, 10**6), max_size=80),
    key=st.integers(-7, 7),
    fill=st.booleans(),
    min_notes=st.sampled_from([0, 3]),
    max_notes=st.sampled_from([None, 4]),
)
def test_a_key_token_changes_nothing_but_what_follows_start(
    choices: list[int], key: int, fill: bool, min_notes: int, max_notes: int | None
) -> None:
    # KEYED has TOK's ids plus the KEY group, so a stream of TOK with the key inserted after
    # <START> is a stream of KEYED; the rules must answer alike at every later prefix (the KEY
    # token is no note: min_notes, max_notes and fill count as without it).
    plain = VoiceLeading(TOK, fill=fill, min_notes=min_notes, max_notes=max_notes)
    keyed = VoiceLeading(KEYED, fill=fill, min_notes=min_notes, max_notes=max_notes)
    assert keyed([KEYED.start_id]) == list(KEYED.key_ids)
    stream = _walk(TOK, choices)
    for k in range(1, len(stream) + 1):
        prefix = stream[:k]
        assert keyed([prefix[0], KEYED.key_id(key), *prefix[1:]]) == plain(prefix), prefix


def test_remembers_a_bounded_number_of_prefixes() -> None:
    rule = VoiceLeading(TOK)
    stream = _walk(TOK, list(range(2 * voicing_module._REMEMBERED)))
    for length in range(1, len(stream) + 1):
        rule(stream[:length])
    assert len(rule._states) == voicing_module._REMEMBERED
    assert tuple(stream) in rule._states  # the newest stays
    # A prefix it forgot is scanned again from the start, with the same answer.
    assert rule(stream[:5]) == VoiceLeading(TOK)(stream[:5])

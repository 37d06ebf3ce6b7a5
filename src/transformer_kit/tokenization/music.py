"""Music tokens: note events <-> one id stream with a grammar, for training and for sampling.

Each note is four tokens `<NOTE:x> <VOICE:v> <DUR:d> <TIME:+t>`, where t is the time to the next
event; `<BAR>` marks a new bar, `<REST> <TIME:+t>` advances time without a note.
`allowed_next` is the grammar as a sampling constraint (`generate(..., allowed_next=...)`).
With `key_tokens=True` a `<KEY:k>` token (the key signature) follows `<START>`; with
`fermata_tokens=True` a `<FERMATA>` token comes before the notes of an onset that holds one.
    >>> tok = MusicTokenizer()
    >>> [tok.vocab.id_to_token(i) for i in tok.encode([NoteEvent(60, 1, 0.0, 1.0)])]
    ['<START>', '<NOTE:C4>', '<VOICE:1>', '<DUR:1.0>', '<TIME:+0.0>', '<END>']
"""

from __future__ import annotations

import bisect
import json
import math
import operator
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from transformer_kit.tokenization.events import NoteEvent, Piece, pitch_name, sort_events
from transformer_kit.tokenization.vocabulary import Vocabulary

__all__ = ["DEFAULT_DURATIONS", "DEFAULT_TIME_STEPS", "MUSIC_SPECIALS", "MusicTokenizer"]

MUSIC_SPECIALS: tuple[str, ...] = ("<PAD>", "<START>", "<END>", "<BAR>", "<REST>")
"""Special tokens of the music vocabulary, ids 0..4 in this order."""

DEFAULT_DURATIONS: tuple[float, ...] = (
    0.125, 0.25, 0.375, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0,
    8.0, 10.0, 12.0, 16.0,
)  # fmt: skip
"""Note lengths in quarter notes. Every length in the 368 four-part Bach chorales of music21 but
2.25, 4.5 and 14 (one note each): 99.996% of the notes exact (bench/tempo_quantization.py),
plus the halves and doubles that `augment.RhythmScale` needs (0.375, 10, 12)."""

DEFAULT_TIME_STEPS: tuple[float, ...] = (
    0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0,
)  # fmt: skip
"""Time advances in quarter notes; the smallest nonzero one (a 32nd note) is the onset grid.
Every chorale onset is on it (denominators 1, 2, 4 and 8 only, no triplets), and every gap
between onsets in the corpus is one step except 5.0 (2 times)."""

_CORPUS_PITCHES = (36, 81)
"""MIDI pitch range of the four-part chorales, C2 to A5 (bench/tempo_quantization.py)."""

_MARGIN = 2
"""Semitones of room on both sides of the corpus range, so `augment.PitchShift` by +-2 stays in."""

_FORMAT = 1
"""Version of the dictionary written by `MusicTokenizer.to_dict`, shared with text tokenizers."""

_KEYS = 12
"""KEY tokens: key signatures up to enharmonic spelling, -6..5 sharps (negative: flats)."""

# Token kinds: what the grammar sees of a token. TIME splits into +0 (a chord goes on) and > 0.
_PAD, _START, _END, _BAR, _REST, _NOTE, _VOICE, _DUR, _TIME0, _TIME, _KEY, _FERMATA = range(12)
_KIND_NAMES = (
    "<PAD>", "<START>", "<END>", "<BAR>", "<REST>", "<NOTE:*>", "<VOICE:*>", "<DUR:*>",
    "<TIME:+0.0>", "<TIME:+t> with t > 0", "<KEY:*>", "<FERMATA>",
)  # fmt: skip

# Grammar states: where the stream is after its last non-pad token.
(
    _S_BEGIN,  # nothing yet
    _S_START,  # after <START>, before any event
    _S_NOTE,  # after <NOTE>
    _S_VOICE,  # after <VOICE>
    _S_DUR,  # after <DUR>
    _S_CHORD,  # after a note's <TIME:+0.0>: the next note starts at the same time
    _S_MOVED,  # after a note's <TIME:+t>, t > 0
    _S_LEAD_REST,  # after a <REST> before the first note
    _S_REST,  # after a <REST> that follows a note
    _S_LEAD_WAIT,  # after the <TIME> of a rest before the first note
    _S_WAIT,  # after the <TIME> of a rest that follows a note
    _S_BAR,  # after <BAR>
    _S_END,  # after <END>
    _S_OPEN,  # after <START> when a <KEY> must follow (key_tokens=True)
    _S_FERMATA,  # after <FERMATA> (fermata_tokens=True): the onset's first note follows
) = range(15)

_TRANSITIONS: dict[tuple[int, int], int] = {
    (_S_BEGIN, _START): _S_START,
    (_S_START, _NOTE): _S_NOTE,
    (_S_START, _REST): _S_LEAD_REST,
    (_S_START, _END): _S_END,
    (_S_NOTE, _VOICE): _S_VOICE,
    (_S_VOICE, _DUR): _S_DUR,
    (_S_DUR, _TIME0): _S_CHORD,
    (_S_DUR, _TIME): _S_MOVED,
    (_S_CHORD, _NOTE): _S_NOTE,
    (_S_CHORD, _END): _S_END,
    (_S_MOVED, _NOTE): _S_NOTE,
    (_S_MOVED, _BAR): _S_BAR,
    (_S_MOVED, _REST): _S_REST,
    (_S_LEAD_REST, _TIME): _S_LEAD_WAIT,
    (_S_REST, _TIME): _S_WAIT,
    (_S_LEAD_WAIT, _NOTE): _S_NOTE,
    (_S_LEAD_WAIT, _REST): _S_LEAD_REST,
    (_S_WAIT, _NOTE): _S_NOTE,
    (_S_WAIT, _BAR): _S_BAR,
    (_S_WAIT, _REST): _S_REST,
    (_S_BAR, _BAR): _S_BAR,
    (_S_BAR, _NOTE): _S_NOTE,
    (_S_END, _PAD): _S_END,
}
"""The whole grammar: (state, kind of the next token) -> next state; a missing pair is illegal.
A bar line only follows time that moved (never inside a chord, never before the first note), and
the piece ends right after a chord's last note, so each piece has one spelling up to how gaps are
split into steps and the order of a chord's notes."""

_KEY_TRANSITIONS: dict[tuple[int, int], int] = {
    (_S_BEGIN, _START): _S_OPEN,
    (_S_OPEN, _KEY): _S_START,
}
"""What `key_tokens=True` changes: `<START>` must be followed by one `<KEY>`, and only there."""

_FERMATA_TRANSITIONS: dict[tuple[int, int], int] = {
    **{(state, _FERMATA): _S_FERMATA for state in (_S_START, _S_LEAD_WAIT, _S_MOVED, _S_WAIT)},
    (_S_BAR, _FERMATA): _S_FERMATA,
    (_S_FERMATA, _NOTE): _S_NOTE,
}
"""What `fermata_tokens=True` adds: one `<FERMATA>` wherever an onset's first note may start
(after its bar lines), followed by that note; never inside a chord, so each onset has one."""

# Kinds after which the state is known from the token alone; TIME and REST need context.
_STATE_AFTER_KIND = {
    _START: _S_START,
    _NOTE: _S_NOTE,
    _VOICE: _S_VOICE,
    _DUR: _S_DUR,
    _BAR: _S_BAR,
    _END: _S_END,
    _KEY: _S_START,
    _FERMATA: _S_FERMATA,
}


class MusicTokenizer:
    """Note events <-> ids: one 4-token group per note, bar lines, rests and a grammar.

    Vocabulary (ids in this order): the specials `<PAD> <START> <END> <BAR> <REST>` (0-4), then
    groups "note" (`<NOTE:A#1>`.. chromatic, so note id + k is k semitones up), "voice"
    (`<VOICE:1>`..), "dur" (`<DUR:0.125>`..) and "time" (`<TIME:+0.0>`..).

    Stream: `<START>`, then the events of `quantize(events)` in order. A note is
    `<NOTE> <VOICE> <DUR> <TIME:+t>` with t the time from its onset to the next event's onset
    (0 inside a chord and after the last note). A gap that is not one time step is split
    greedily: the largest step <= gap on the note, then `<REST> <TIME:+t>` pairs for the rest
    (silence before the first note is `<REST> <TIME>` pairs right after `<START>`). k `<BAR>`s
    come right before the first note of a bar k bars on. `<END>` closes the piece. Decoding
    runs a clock from 0: a note starts at the clock, each TIME advances it, and a note's bar is
    the number of `<BAR>`s before it.

    With `key_tokens=True` the four groups are followed by a group "key", `<KEY:-6>`..`<KEY:5>`:
    the key signature in sharps (negative: flats) up to enharmonic spelling, ((k + 6) mod 12) - 6,
    so 7 sharps (C#) is `<KEY:-5>` (Db) and 6 flats or 6 sharps are `<KEY:-6>`. The stream then
    opens `<START> <KEY:k>` with the key of the piece's first event, the grammar allows a KEY
    token there and nowhere else, and `decode` gives every event that key (0 without one).

    With `fermata_tokens=True` the vocabulary ends with one more group, "fermata":
    `<FERMATA>`, written right before the first note of an onset (after its `<BAR>`s) where
    any note starts with a fermata. `decode` gives every note of that onset `fermata=True`;
    without the option every event's fermata is False. In the chorales fermatas mark the ends
    of phrases (the cadences), about 6 per piece, so a model sees, and writes, its phrases.

    Args:
        min_pitch: lowest MIDI pitch with a NOTE token; the default is the chorale corpus's
            lowest (36, C2) minus 2 semitones.
        max_pitch: highest MIDI pitch; the default is the corpus's highest (81, A5) plus 2.
        voices: number of VOICE tokens, voices 1..voices.
        durations: DUR values in quarter notes, > 0, strictly increasing.
        time_steps: TIME values in quarter notes, strictly increasing, starting with 0.0; each a
            whole multiple of the smallest nonzero one, which is the onset grid.
        key_tokens: add the KEY group and open every piece with its key signature, so that a
            model draws a key first and writes every note in it.
        fermata_tokens: add `<FERMATA>` (after the KEY group) and mark every onset where a
            note with a fermata starts.

    Raises:
        ValueError: on an argument outside what is allowed, naming it and its value.

    Example:
        >>> tok = MusicTokenizer()
        >>> piece = [NoteEvent(60, 1, 0.0, 2.0), NoteEvent(48, 4, 0.0, 1.0),
        ...          NoteEvent(62, 1, 12.0, 1.0, bar=2)]
        >>> ids = tok.encode(piece)
        >>> " ".join(tok.vocab.id_to_token(i) for i in ids[5:14])
        '<NOTE:C3> <VOICE:4> <DUR:1.0> <TIME:+8.0> <REST> <TIME:+4.0> <BAR> <BAR> <NOTE:D4>'
        >>> [e.bar for e in tok.decode(ids)], len(tok.vocab)
        ([0, 0, 2], 93)
    """

    kind = "music"

    def __init__(
        self,
        *,
        min_pitch: int = _CORPUS_PITCHES[0] - _MARGIN,
        max_pitch: int = _CORPUS_PITCHES[1] + _MARGIN,
        voices: int = 4,
        durations: Sequence[float] = DEFAULT_DURATIONS,
        time_steps: Sequence[float] = DEFAULT_TIME_STEPS,
        key_tokens: bool = False,
        fermata_tokens: bool = False,
    ) -> None:
        for name, value in (("min_pitch", min_pitch), ("max_pitch", max_pitch)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 127:
                raise ValueError(
                    f"MusicTokenizer: {name} must be an int MIDI pitch in [0, 127], got {value!r}"
                )
        if max_pitch < min_pitch:
            raise ValueError(
                f"MusicTokenizer: max_pitch must be >= min_pitch ({min_pitch}), got {max_pitch}"
            )
        if isinstance(voices, bool) or not isinstance(voices, int) or voices < 1:
            raise ValueError(f"MusicTokenizer: voices must be an int >= 1, got {voices!r}")
        if not isinstance(key_tokens, bool):
            raise ValueError(f"MusicTokenizer: key_tokens must be a bool, got {key_tokens!r}")
        if not isinstance(fermata_tokens, bool):
            raise ValueError(
                f"MusicTokenizer: fermata_tokens must be a bool, got {fermata_tokens!r}"
            )
        self._durations = _increasing(durations, "durations", first_zero=False)
        self._time_steps = _increasing(time_steps, "time_steps", first_zero=True)
        grid = self._time_steps[1]
        self._units = [round(t / grid) for t in self._time_steps]
        for t, units in zip(self._time_steps, self._units, strict=True):
            if abs(t - units * grid) > 1e-9 * max(1.0, t):
                raise ValueError(
                    f"MusicTokenizer: time_steps must be whole multiples of the smallest "
                    f"nonzero step {grid!r}, got {t!r} in {list(self._time_steps)!r}"
                )
        self._min_pitch, self._max_pitch = min_pitch, max_pitch
        self._voices, self._grid, self._key_tokens = voices, grid, key_tokens
        self._fermata_tokens = fermata_tokens
        groups = {
            "note": [f"<NOTE:{pitch_name(p)}>" for p in range(min_pitch, max_pitch + 1)],
            "voice": [f"<VOICE:{v}>" for v in range(1, voices + 1)],
            "dur": [f"<DUR:{d!r}>" for d in self._durations],
            "time": [f"<TIME:+{t!r}>" for t in self._time_steps],
        }
        if key_tokens:  # after the four, so their ids are the same with and without it
            groups["key"] = [f"<KEY:{k}>" for k in range(-_KEYS // 2, _KEYS // 2)]
        if fermata_tokens:  # last: only its own id depends on key_tokens
            groups["fermata"] = ["<FERMATA>"]
        self._vocab = Vocabulary(groups, specials=MUSIC_SPECIALS)
        self._transitions = dict(_TRANSITIONS)
        if key_tokens:
            self._transitions.update(_KEY_TRANSITIONS)
        if fermata_tokens:
            self._transitions.update(_FERMATA_TRANSITIONS)
        self._build_tables()

    def _build_tables(self) -> None:
        """Precompute per-token kinds and per-state allowed ids, so each grammar step is O(1)."""
        size = len(self._vocab)
        kinds = [_PAD, _START, _END, _BAR, _REST]
        kinds += [_NOTE] * len(self.note_ids) + [_VOICE] * len(self.voice_ids)
        kinds += [_DUR] * len(self.dur_ids)
        kinds += [_TIME0 if units == 0 else _TIME for units in self._units]
        kinds += [_KEY] * len(self.key_ids) + [_FERMATA] * len(self.fermata_ids)
        self._kinds = kinds
        self._time_units = [0] * self.time_ids.start + self._units
        self._time_units += [0] * (size - len(self._time_units))
        self._state_after = [_STATE_AFTER_KIND.get(kind, -1) for kind in kinds]
        self._state_after[self.start_id] = self._transitions[(_S_BEGIN, _START)]
        n_states = 1 + max(self._transitions.values())
        self._allowed = [
            [i for i in range(size) if (state, kinds[i]) in self._transitions]
            for state in range(n_states)
        ]

    # -- ids ------------------------------------------------------------------------------

    @property
    def vocab(self) -> Vocabulary:
        """The vocabulary that fixes every id."""
        return self._vocab

    @property
    def vocab_size(self) -> int:
        """Number of ids, `len(vocab)`."""
        return len(self._vocab)

    @property
    def pad_id(self) -> int:
        """Id of "<PAD>": always 0."""
        return 0

    @property
    def start_id(self) -> int:
        """Id of "<START>": always 1."""
        return 1

    @property
    def end_id(self) -> int:
        """Id of "<END>": always 2."""
        return 2

    @property
    def bar_id(self) -> int:
        """Id of "<BAR>": always 3."""
        return 3

    @property
    def rest_id(self) -> int:
        """Id of "<REST>": always 4."""
        return 4

    @property
    def note_ids(self) -> range:
        """Ids of the NOTE tokens, lowest pitch first; `note_ids[k]` is `min_pitch + k`."""
        return self._vocab.group_ids("note")

    @property
    def voice_ids(self) -> range:
        """Ids of the VOICE tokens, voice 1 first."""
        return self._vocab.group_ids("voice")

    @property
    def dur_ids(self) -> range:
        """Ids of the DUR tokens, in the order of `durations`."""
        return self._vocab.group_ids("dur")

    @property
    def time_ids(self) -> range:
        """Ids of the TIME tokens, in the order of `time_steps` (`<TIME:+0.0>` first)."""
        return self._vocab.group_ids("time")

    @property
    def key_ids(self) -> range:
        """Ids of the KEY tokens, `<KEY:-6>` first; an empty range without `key_tokens`."""
        if not self._key_tokens:
            return range(len(self._vocab), len(self._vocab))
        return self._vocab.group_ids("key")

    @property
    def fermata_ids(self) -> range:
        """The id of `<FERMATA>` as a range of one; an empty range without `fermata_tokens`."""
        if not self._fermata_tokens:
            return range(len(self._vocab), len(self._vocab))
        return self._vocab.group_ids("fermata")

    @property
    def fermata_tokens(self) -> bool:
        """Whether onsets with a fermata are marked `<FERMATA>` (the constructor's option)."""
        return self._fermata_tokens

    @property
    def key_tokens(self) -> bool:
        """Whether each piece opens with a KEY token (the constructor's `key_tokens`)."""
        return self._key_tokens

    @property
    def min_pitch(self) -> int:
        """Lowest MIDI pitch with a NOTE token."""
        return self._min_pitch

    @property
    def max_pitch(self) -> int:
        """Highest MIDI pitch with a NOTE token."""
        return self._max_pitch

    @property
    def voices(self) -> int:
        """Number of voices; VOICE tokens cover 1..voices."""
        return self._voices

    @property
    def durations(self) -> tuple[float, ...]:
        """DUR values in quarter notes, increasing."""
        return self._durations

    @property
    def time_steps(self) -> tuple[float, ...]:
        """TIME values in quarter notes, increasing, starting with 0.0."""
        return self._time_steps

    @property
    def grid(self) -> float:
        """The onset grid in quarter notes: the smallest nonzero time step."""
        return self._grid

    def note_id(self, pitch: int) -> int:
        """Return the id of `<NOTE:...>` for MIDI `pitch`.

        Raises:
            ValueError: if `pitch` is not an int in [min_pitch, max_pitch].
        """
        if isinstance(pitch, bool) or not isinstance(pitch, int):
            raise ValueError(f"MusicTokenizer.note_id: pitch must be an int, got {pitch!r}")
        if not self._min_pitch <= pitch <= self._max_pitch:
            raise ValueError(f"MusicTokenizer.note_id: pitch {pitch} is {self._outside(pitch)}")
        return self.note_ids.start + pitch - self._min_pitch

    def pitch_of(self, i: int) -> int:
        """Return the MIDI pitch of NOTE id `i`.

        Raises:
            ValueError: if `i` is not a NOTE id.
        """
        ids = self.note_ids
        if isinstance(i, bool) or not isinstance(i, int) or i not in ids:
            raise ValueError(
                f"MusicTokenizer.pitch_of: id {i!r} is not a NOTE id; NOTE ids are "
                f"{ids.start}..{ids.stop - 1}"
            )
        return self._min_pitch + i - ids.start

    def key_id(self, key: int) -> int:
        """Return the id of the KEY token of key signature `key` (sharps, -7..7) up to spelling.

        The token is `<KEY:c>` with c = ((key + 6) mod 12) - 6, the same key signature spelt
        with at most 6 flats or 5 sharps: 7 sharps (C# major) is `<KEY:-5>` (Db major).

        Raises:
            ValueError: if the tokenizer has no KEY tokens or `key` is not an int in [-7, 7].
        """
        if not self._key_tokens:
            raise ValueError("MusicTokenizer.key_id: this tokenizer has no KEY tokens")
        if isinstance(key, bool) or not isinstance(key, int) or not -7 <= key <= 7:
            raise ValueError(f"MusicTokenizer.key_id: key must be an int in [-7, 7], got {key!r}")
        return self.key_ids.start + _canonical_key(key) + _KEYS // 2

    def time_values(self) -> list[float]:
        """Per id, the time the token advances the clock: its value for TIME ids, else 0.0."""
        values = [0.0] * len(self._vocab)
        values[self.time_ids.start : self.time_ids.stop] = self._time_steps
        return values

    def duration_values(self) -> list[float]:
        """Per id, the duration a DUR token gives its note, in quarter lengths; else 0.0."""
        values = [0.0] * len(self.vocab)
        values[self.dur_ids.start : self.dur_ids.stop] = self._durations
        return values

    # -- events <-> ids -------------------------------------------------------------------

    def quantize(self, events: Sequence[NoteEvent]) -> Piece:
        """Return exactly what the token stream can represent of `events`.

        Onsets snap to the nearest multiple of `grid` (halves round up), durations to the
        nearest DUR value (ties to the shorter). Keys become 0, or with `key_tokens` the
        canonical spelling of the first event's key (a piece has one KEY token, so a later key
        change is not kept; see the class docstring). Fermatas become False, or with
        `fermata_tokens` True for every event at an onset (on the grid) where any has one. Bars are
        made to fit the stream: the bar at an onset is the largest bar of any event at or before
        it, minus that of the first onset, so the first event is in bar 0, bars never go back,
        and a chord lies in one bar. The result is in `sort_events` order; `quantize` is
        idempotent.

        Raises:
            TypeError: if an entry is not a NoteEvent.
            ValueError: on a pitch outside [min_pitch, max_pitch] or a voice above `voices`,
                naming the event's position.
        """
        rows = []
        for position, e in enumerate(events):
            if not isinstance(e, NoteEvent):
                raise TypeError(
                    f"MusicTokenizer.quantize: events[{position}] must be a NoteEvent, "
                    f"got {type(e).__name__}"
                )
            if not self._min_pitch <= e.pitch <= self._max_pitch:
                raise ValueError(
                    f"MusicTokenizer.quantize: events[{position}] has pitch {e.pitch} "
                    f"{self._outside(e.pitch)}"
                )
            if e.voice > self._voices:
                raise ValueError(
                    f"MusicTokenizer.quantize: events[{position}] has voice {e.voice}; this "
                    f"tokenizer has voices 1..{self._voices}"
                )
            units = math.floor(e.onset / self._grid + 0.5)
            duration = self._snap_duration(e.duration)
            rows.append((units, e.voice, e.pitch, duration, e.bar, e.key, e.fermata))
        rows.sort(key=lambda row: row[:3])  # stable, so equal keys keep their order
        bars: dict[int, int] = {}  # onset (grid units) -> bar, filled in onset order
        running = 0
        for units, *_, bar, _, _ in rows:
            running = bars[units] = max(running, bar)
        first = bars[rows[0][0]] if rows else 0
        key = _canonical_key(rows[0][5]) if rows and self._key_tokens else 0
        held = {row[0] for row in rows if row[6]} if self._fermata_tokens else set()
        return [
            NoteEvent(
                pitch, voice, units * self._grid, duration, bars[units] - first, key, units in held
            )
            for units, voice, pitch, duration, *_ in rows
        ]

    def encode(
        self, events: Sequence[NoteEvent], *, add_start: bool = True, add_end: bool = True
    ) -> list[int]:
        """Map the events to ids: the stream of `quantize(events)` (see the class docstring).

        With `key_tokens`, `add_start` also writes the piece's KEY token right after `<START>`
        (`<KEY:0>` for no events); a window body (`add_start=False`) has none.

        Raises:
            TypeError, ValueError: as `quantize`.
        """
        piece = self.quantize(events)
        time0 = self.time_ids.start
        ids = [self.start_id] if add_start else []
        if add_start and self._key_tokens:
            ids.append(self.key_id(piece[0].key if piece else 0))
        onsets = [round(e.onset / self._grid) for e in piece]
        if onsets and onsets[0] > 0:
            for step in self._split(onsets[0]):
                ids += [self.rest_id, time0 + step]
        for k, e in enumerate(piece):
            if k:
                ids += [self.bar_id] * (e.bar - piece[k - 1].bar)
            if e.fermata and (k == 0 or onsets[k - 1] != onsets[k]):
                ids.append(self.fermata_ids.start)
            dur = self.dur_ids.start + self._durations.index(e.duration)
            ids += [self.note_id(e.pitch), self.voice_ids.start + e.voice - 1, dur]
            gap = onsets[k + 1] - onsets[k] if k + 1 < len(piece) else 0
            first, *rest = self._split(gap)
            ids.append(time0 + first)
            for step in rest:
                ids += [self.rest_id, time0 + step]
        if add_end:
            ids.append(self.end_id)
        return ids

    def decode(self, ids: Iterable[int]) -> Piece:
        """Map ids back to events, in `sort_events` order; stops at `<END>`.

        `<PAD>` is skipped anywhere, a leading `<START>` is optional, and an unfinished note or
        rest at the very end (a cut-off generation) is dropped. Every event gets the key of the
        `<KEY>` token (its canonical count of sharps), 0 when there is none, and the notes of
        an onset that opens with `<FERMATA>` get `fermata=True`. Every piece decodes
        to a fixed point of `quantize`: `quantize(decode(ids)) == decode(ids)`.

        Raises:
            ValueError: on a token the grammar does not allow where it stands, naming its
                position, the token and what was allowed there.
            IndexError: on an id outside `range(vocab_size)`.
        """
        tolist = getattr(ids, "tolist", None)  # numpy arrays and torch tensors
        tokens = tolist() if callable(tolist) else [operator.index(i) for i in ids]
        events: list[NoteEvent] = []
        state, clock, bars, previous = _S_BEGIN, 0, 0, "the beginning"
        pitch = voice = key = 0
        duration, held = 0.0, False
        for position, i in enumerate(tokens):
            kind = self._kind(i, position)
            if kind == _PAD:
                continue
            if state == _S_BEGIN and kind != _START:
                state = _S_OPEN if kind == _KEY else _S_START  # a stream may start without <START>
            following = self._transitions.get((state, kind))
            if following is None:
                expected = sorted({_KIND_NAMES[self._kinds[a]] for a in self._allowed[state]})
                raise ValueError(
                    f"MusicTokenizer.decode: token {self._vocab.tokens[i]} (id {i}) at position "
                    f"{position} cannot follow {previous}; allowed there: {', '.join(expected)}"
                )
            if kind == _NOTE:
                pitch = self._min_pitch + i - self.note_ids.start
            elif kind == _VOICE:
                voice = i - self.voice_ids.start + 1
            elif kind == _DUR:
                duration = self._durations[i - self.dur_ids.start]
            elif kind in (_TIME0, _TIME):
                if state == _S_DUR:
                    onset = clock * self._grid
                    events.append(NoteEvent(pitch, voice, onset, duration, bars, key, held))
                clock += self._time_units[i]
                held = held and not self._time_units[i]
            elif kind == _BAR:
                bars += 1
            elif kind == _KEY:
                key = i - self.key_ids.start - _KEYS // 2
            elif kind == _FERMATA:
                held = True
            elif kind == _END:
                break
            state, previous = following, self._vocab.tokens[i]
        return sort_events(events)

    # -- grammar --------------------------------------------------------------------------

    def allowed_next(self, ids: Sequence[int]) -> list[int]:
        """Return the ids the grammar allows after the prefix `ids` (a prompt counts too).

        An empty (or all-`<PAD>`) prefix allows `<START>`; after `<END>` only `<PAD>`. The
        state is read off the last non-pad token, and for a TIME or REST also off the token
        before it; only a rest needs to look further back, over its own `<REST> <TIME>` pairs,
        to tell silence before the first note (no `<BAR>` allowed yet) from a rest after one.

        Example:
            >>> tok = MusicTokenizer()
            >>> [tok.vocab.id_to_token(i) for i in tok.allowed_next([tok.start_id])][:3]
            ['<END>', '<REST>', '<NOTE:A#1>']

        Raises:
            ValueError: if a token it reads is not an id of the vocabulary.
        """
        j, token = self._last(ids, len(ids) - 1)
        state = _S_BEGIN if j < 0 else self._state_at(ids, j, token)
        return list(self._allowed[state])

    def _state_at(self, ids: Sequence[int], j: int, token: int) -> int:
        """The grammar state after `token`, the non-pad token at `ids[j]`."""
        kind = self._kind(token, j, ValueError)
        if kind == _REST:
            return _S_LEAD_REST if self._before_first_note(ids, j) else _S_REST
        if kind not in (_TIME0, _TIME):
            return self._state_after[token]
        k, before = self._last(ids, j - 1)
        if before == self.rest_id:
            return _S_LEAD_WAIT if self._before_first_note(ids, k) else _S_WAIT
        return _S_CHORD if kind == _TIME0 else _S_MOVED

    def _before_first_note(self, ids: Sequence[int], j: int) -> bool:
        """Whether the `<REST>` at `ids[j]` is part of the silence before the first note."""
        while True:
            k, token = self._last(ids, j - 1)
            if k < 0:
                return True
            kind = self._kind(token, k, ValueError)
            if kind in (_START, _KEY):
                return True
            if kind not in (_TIME0, _TIME):
                return False
            j, token = self._last(ids, k - 1)
            if token != self.rest_id:
                return False  # the TIME of a note

    @staticmethod
    def _last(ids: Sequence[int], j: int) -> tuple[int, int]:
        """Index and id of the last non-pad token at or before `j`; (-1, 0) when none."""
        while j >= 0:
            token = ids[j]
            if token != 0:
                return j, token
            j -= 1
        return -1, 0

    def _kind(self, i: int, position: int, error: type[Exception] = IndexError) -> int:
        """The kind of token `i`; `error` (naming the position) when it is not an id."""
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(self._kinds):
            raise error(
                f"MusicTokenizer: id {i!r} at position {position} is not a token id; valid ids "
                f"are 0..{len(self._kinds) - 1}"
            )
        return self._kinds[i]

    # -- grid -----------------------------------------------------------------------------

    def _snap_duration(self, duration: float) -> float:
        """The nearest DUR value; a tie goes to the shorter."""
        values = self._durations
        k = bisect.bisect_left(values, duration)
        if k == 0:
            return values[0]
        if k == len(values):
            return values[-1]
        lower, upper = values[k - 1], values[k]
        return lower if duration - lower <= upper - duration else upper

    def _split(self, gap: int) -> list[int]:
        """Greedy split of `gap` grid units into time steps (indices), largest first."""
        units = self._units
        if gap == 0:
            return [0]
        steps = []
        while gap > 0:
            k = bisect.bisect_right(units, gap) - 1
            steps.append(k)
            gap -= units[k]
        return steps

    def _outside(self, pitch: int) -> str:
        return (
            f"outside the tokenizer's range [{self._min_pitch}, {self._max_pitch}] "
            f"({pitch_name(self._min_pitch)} to {pitch_name(self._max_pitch)})"
        )

    # -- serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Return `{"kind": "music", "format": 1, "vocab": ..., "config": {...}}`, JSON-ready.

        The config holds "key_tokens" and "fermata_tokens" only when True, so a tokenizer
        without them writes exactly what it wrote before the options existed.
        """
        config: dict[str, Any] = {
            "min_pitch": self._min_pitch,
            "max_pitch": self._max_pitch,
            "voices": self._voices,
            "durations": list(self._durations),
            "time_steps": list(self._time_steps),
        }
        if self._key_tokens:
            config["key_tokens"] = True
        if self._fermata_tokens:
            config["fermata_tokens"] = True
        return {
            "kind": self.kind,
            "format": _FORMAT,
            "vocab": self._vocab.to_dict(),
            "config": config,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MusicTokenizer:
        """Rebuild a tokenizer from `to_dict` output; every id must come back unchanged.

        Raises:
            ValueError: on another kind, an unknown format, a malformed dict, or a stored
                vocabulary that differs from the one the config builds.
        """
        if not isinstance(d, Mapping) or d.get("kind") != cls.kind:
            kind = d.get("kind") if isinstance(d, Mapping) else type(d).__name__
            raise ValueError(
                f"MusicTokenizer.from_dict: expected kind 'music', got {kind!r}; use "
                f"load_tokenizer(path) to load any kind"
            )
        if d.get("format") != _FORMAT:
            raise ValueError(
                f"MusicTokenizer.from_dict: unsupported format {d.get('format')!r}; this "
                f"version reads format {_FORMAT}"
            )
        config = d.get("config")
        keys = {"min_pitch", "max_pitch", "voices", "durations", "time_steps"}
        if (
            not isinstance(config, Mapping)
            or set(config) - {"key_tokens", "fermata_tokens"} != keys
            or "vocab" not in d
        ):
            raise ValueError(
                f"MusicTokenizer.from_dict: needs 'vocab' and a 'config' with keys "
                f"{sorted(keys)} (and optionally 'key_tokens', 'fermata_tokens'), got {d!r:.200}"
            )
        tok = cls(**config)
        stored = Vocabulary.from_dict(d["vocab"])
        if stored != tok.vocab:
            raise ValueError(
                f"MusicTokenizer.from_dict: the stored vocabulary {stored!r} is not the one "
                f"its config builds, {tok.vocab!r}; ids would shift"
            )
        return tok

    @classmethod
    def _from_payload(cls, payload: dict[str, Any]) -> MusicTokenizer:
        return cls.from_dict(payload)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write `to_dict()` as JSON to `path`; `load` and `load_tokenizer` read it back."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MusicTokenizer:
        """Read a tokenizer written by `save`; ids and grid come back exactly.

        Raises:
            ValueError: if the file is not JSON or not a music tokenizer of a known format.
        """
        text = Path(path).read_text(encoding="utf-8")
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"MusicTokenizer.load: {os.fspath(path)!r} is not valid JSON: {e}"
            ) from e
        return cls.from_dict(payload)

    def __repr__(self) -> str:
        return (
            f"MusicTokenizer(vocab_size={len(self._vocab)}, pitches={self._min_pitch}.."
            f"{self._max_pitch}, voices={self._voices}, grid={self._grid!r}"
            f"{', key_tokens=True' if self._key_tokens else ''}"
            f"{', fermata_tokens=True' if self._fermata_tokens else ''})"
        )


def _canonical_key(key: int) -> int:
    """A key signature in sharps up to enharmonic spelling: ((key + 6) mod 12) - 6, in -6..5.

    A fifth up adds a sharp, and 12 fifths are 7 octaves, so sharps count modulo 12; -6 (Gb,
    6 flats) stands for F# (6 sharps) too, the spelling the chorales' keys (-4..4) never need.
    """
    return (key + _KEYS // 2) % _KEYS - _KEYS // 2


def _increasing(values: Sequence[float], name: str, *, first_zero: bool) -> tuple[float, ...]:
    """Check a DUR / TIME value list and return it as floats."""
    allowed = (
        "a strictly increasing sequence of finite numbers starting with 0.0, with a nonzero one"
        if first_zero
        else "a non-empty strictly increasing sequence of finite numbers > 0"
    )
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise ValueError(f"MusicTokenizer: {name} must be {allowed}, got {values!r}")
    if not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    ):
        raise ValueError(f"MusicTokenizer: {name} must be {allowed}, got {list(values)!r}")
    floats = tuple(float(v) for v in values)
    bad = len(floats) < 2 or floats[0] != 0.0 if first_zero else not floats or floats[0] <= 0.0
    if bad or any(b <= a for a, b in zip(floats, floats[1:], strict=False)):
        raise ValueError(f"MusicTokenizer: {name} must be {allowed}, got {list(values)!r}")
    return floats

"""`VoiceLeading`: the music grammar plus voice rules, as a sampling constraint.

`MusicTokenizer.allowed_next` keeps a stream well formed but knows nothing of voices, so a
sampled piece can start a note in a voice that is still holding one, or let a voice fall
silent. `VoiceLeading(tokenizer)` narrows the grammar's choices so that each voice holds one
note at a time and, with `fill=True`, every voice sounds from the first onset to the last, as
in a four-part chorale.
    >>> tok = MusicTokenizer(voices=2)
    >>> rule = VoiceLeading(tok)
    >>> ids = tok.encode([NoteEvent(60, 1, 0.0, 1.0)])[:-2]  # one note in voice 1, then ?
    >>> [tok.vocab.id_to_token(i) for i in rule(ids)]  # time may not move: voice 2 is silent
    ['<TIME:+0.0>']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeGuard

from transformer_kit.tokenization.events import NoteEvent  # noqa: F401  (used by the doctest)
from transformer_kit.tokenization.music import MusicTokenizer

__all__ = ["VoiceLeading"]

# How many prefixes' scan states a VoiceLeading keeps, oldest forgotten first. Each row of a
# sampled batch asks about its prefix once per step, one token longer each time, so a batch of
# up to this many rows finds every parent prefix; a larger one rereads every prefix in full.
# Memory: 8 bytes per token per prefix (16 MB at 1024 prefixes of 2000 tokens).
_REMEMBERED = 1024
# (clock, each voice's end, voice, duration, notes, ended, marked): see VoiceLeading._scan.
_State = tuple[int, tuple[int, ...], int, int | None, int, bool, bool]


class VoiceLeading:
    """A `generate(..., allowed_next=...)` constraint: the tokenizer's grammar and voice rules.

    It reads the whole prefix (time in grid units, and when each voice's last note ends) and
    removes from `tokenizer.allowed_next(ids)`:

    - a `<VOICE:v>` whose voice still sounds at the current onset (each voice is monophonic,
      as in the chorales: none of their 85,447 notes overlaps another of its voice);
    - a `<NOTE:*>`, `<BAR>` or `<FERMATA>` when no voice is free at the current onset (after a
      bar line only notes may follow, so a bar line then could only repeat);
    - with `fill=True`: a time step that would leave a voice silent, that is any `<TIME:+t>`
      with t > 0 past the earliest end of a sounding voice (only `<TIME:+0.0>` is left while
      a voice is free, so the next note goes to it), and a `<REST>` while a voice is free.
      Every voice then sounds without a gap from the first onset to the last;
    - while fewer than `min_notes` notes are written, and with `fill` while the voices' last
      notes would not all end at the same time: `<END>`, and the `<TIME:+0.0>` after a note
      that leaves no voice free (a chord that cannot grow could only end there). With `fill` a
      piece thus ends on a chord that all voices release together, as every chorale does;
    - once `max_notes` notes are written, everything but the ending, at the first chance the
      other rules give: the `<TIME:+0.0>` after a note that `<END>` may follow (with `fill`,
      a chord whose voices all end together), then `<END>`.

    If the rules would leave nothing, the grammar's own choices are returned, so a constrained
    stream always stays decodable. The state after each prefix is remembered (the last
    `_REMEMBERED` = 1024 prefixes), so a prefix one token longer than one seen before costs one
    step of the rules instead of a Python pass over it (building and hashing the prefix as a
    tuple stays, in C): sampling calls the rule once per row per token with the row's growing
    prefix. Any other prefix, and every prefix of a batch of more than 1024 rows, is scanned
    from its start, with the same result.

    Args:
        tokenizer: the `MusicTokenizer` whose ids are generated.
        fill: also keep every voice sounding and end the piece only where all voices end
            together (see above); False applies only the one-note-per-voice rule.
        min_notes: no `<END>` before this many notes (0: a piece may end at any chord). A model
            that loses track of which voices are busy can otherwise end a piece early: it asks
            for another note at an onset whose voices are all taken, and only `<END>` is left.
        max_notes: end the piece at the first chance once this many notes are written (None:
            the model chooses). A soft maximum: with `fill` the chance is the first chord whose
            voices all end together, so a piece whose voices never align again runs on. A
            model whose window holds a whole piece can lose track of its length and write on
            past every ending; this ends it near a real piece's length (docs/results.md).
        end_on_fermata: with a tokenizer that has `fermata_tokens`, also allow `<END>` only
            on a chord that opened with `<FERMATA>` (a cadence, as 99% of the chorales end),
            and with `max_notes` end at the next such chord.

    Raises:
        TypeError: if `tokenizer` is not a `MusicTokenizer`.
        ValueError: if `min_notes` is not an int >= 0, `max_notes` not None or an int >=
            max(1, min_notes), or `end_on_fermata` not a bool or True for a tokenizer without
            FERMATA tokens.
    """

    def __init__(
        self,
        tokenizer: MusicTokenizer,
        *,
        fill: bool = True,
        min_notes: int = 0,
        max_notes: int | None = None,
        end_on_fermata: bool = False,
    ) -> None:
        if not isinstance(tokenizer, MusicTokenizer):
            raise TypeError(
                f"VoiceLeading: tokenizer must be a MusicTokenizer, got {type(tokenizer).__name__}"
            )
        if isinstance(min_notes, bool) or not isinstance(min_notes, int) or min_notes < 0:
            raise ValueError(f"VoiceLeading: min_notes must be an int >= 0, got {min_notes!r}")
        if not self.valid_max_notes(max_notes, min_notes):
            raise ValueError(
                f"VoiceLeading: max_notes must be None or an int >= max(1, min_notes)"
                f" (min_notes={min_notes}), got {max_notes!r}"
            )
        if not isinstance(end_on_fermata, bool):
            raise ValueError(f"VoiceLeading: end_on_fermata must be a bool, got {end_on_fermata!r}")
        if end_on_fermata and not tokenizer.fermata_tokens:
            raise ValueError(
                "VoiceLeading: end_on_fermata=True needs a tokenizer with FERMATA tokens "
                "(fermata_tokens=True)"
            )
        self.end_on_fermata = end_on_fermata
        self.tokenizer = tokenizer
        self.fill = fill
        self.min_notes = min_notes
        self.max_notes = max_notes
        grid = tokenizer.grid
        size = len(tokenizer.vocab)
        # Per id: grid units a DUR lasts / a TIME advances, and the voice index of a VOICE.
        self._dur_units = [0] * size
        for i, length in zip(tokenizer.dur_ids, tokenizer.durations, strict=True):
            self._dur_units[i] = round(length / grid)
        self._time_units = [0] * size
        for i, step in zip(tokenizer.time_ids, tokenizer.time_steps, strict=True):
            self._time_units[i] = round(step / grid)
        self._voice_of = [-1] * size
        for v, i in enumerate(tokenizer.voice_ids):
            self._voice_of[i] = v
        self._notes = set(tokenizer.note_ids)
        self._times = set(tokenizer.time_ids)
        self._bar_id, self._rest_id = tokenizer.bar_id, tokenizer.rest_id
        self._fermata = tokenizer.fermata_ids  # empty without fermata_tokens
        # Scan state after each recent prefix, oldest first (dicts keep insertion order).
        self._states: dict[tuple[int, ...], _State] = {}

    @staticmethod
    def valid_max_notes(max_notes: object, min_notes: int) -> TypeGuard[int | None]:
        """Whether `max_notes` may go with `min_notes`: None, or an int >= max(1, min_notes).

        A `min_notes` that is not an int is left to its own check: only `max_notes` is judged.
        """
        if isinstance(max_notes, bool) or not isinstance(max_notes, int):
            return max_notes is None
        return not isinstance(min_notes, int) or max_notes >= max(1, min_notes)

    def __call__(self, ids: Sequence[int]) -> list[int]:
        """The ids allowed after the prefix `ids` (`list[int]`, prompt included)."""
        allowed = self.tokenizer.allowed_next(ids)
        clock, ends, voice, duration, notes, marked = self._scan(ids)
        pending = 0  # 1 while choosing the TIME after a note, which then holds its voice
        own_end = clock  # that note's end
        if voice >= 0 and duration is not None:
            own_end = clock + duration
            ends[voice] = max(ends[voice], own_end)
            pending = 1
        free = {v for v, end in enumerate(ends) if end <= clock}
        room = max(0, min(ends) - clock)  # grid units until the first voice falls silent
        no_end = not self._may_end(notes + pending, ends, marked)
        time0 = self.tokenizer.time_ids.start
        keep = []
        for i in allowed:
            v = self._voice_of[i]
            if no_end and (i == self.tokenizer.end_id or (i == time0 and not free)):
                ok = False
            elif v >= 0:
                ok = v in free
            elif i in self._notes or i == self._bar_id or i in self._fermata:
                # After a bar line only notes (or more bar lines) may follow, so a bar needs a
                # free voice too, or the stream could only repeat <BAR>; a <FERMATA> likewise.
                ok = bool(free)
            elif i == self._rest_id:
                ok = not (self.fill and free)
            elif i in self._times:
                ok = not self.fill or self._time_units[i] <= room
            else:
                ok = True
            if ok:
                keep.append(i)
        if self.max_notes is not None and notes + pending >= self.max_notes and not no_end:
            # Past max_notes, and the piece may end: <END> closes a chord, so after a note the
            # ending is its <TIME:+0.0>, then <END>. The scan will record the note's own end
            # (`_advance`), not the later of it and its voice's previous end taken above; a
            # prompt that broke the rules (a voice reused while it sounds) can make the two
            # differ, so <END> is checked against the state the +0.0 really leads to.
            if self.tokenizer.end_id in keep:
                return [self.tokenizer.end_id]
            if pending and time0 in keep:
                after = list(ends)
                after[voice] = own_end
                if self._may_end(notes + 1, after, marked):
                    return [time0]
        return keep if keep else allowed

    def _may_end(self, notes: int, ends: list[int], marked: bool) -> bool:
        """Whether the piece may end with `notes` written and each voice ending at `ends`.

        Not before `min_notes` notes, with `fill` only where every voice ends together, and
        with `end_on_fermata` only on an onset marked `<FERMATA>` (`marked`).
        """
        if self.end_on_fermata and not marked:
            return False
        return notes >= self.min_notes and not (self.fill and max(ends) != min(ends))

    def _scan(self, ids: Sequence[int]) -> tuple[int, list[int], int, int | None, int, bool]:
        """Clock, each voice's end (grid units), the note being written, and the note count.

        Returns `(clock, ends, voice, duration, notes, marked)`: `voice` is the voice index of
        a note whose `<VOICE>` has been read but not yet its `<TIME>` (else -1), `duration` its
        length in grid units once its `<DUR>` is read (else None), `notes` the notes completed,
        `marked` whether the current onset opened with `<FERMATA>`.
        Reading stops at the first `<END>`.
        """
        key = tuple(ids)
        state = self._states.get(key)
        if state is None:
            parent = self._states.get(key[:-1]) if key else None
            if parent is None:
                state = self._advance(
                    (0, (0,) * len(self.tokenizer.voice_ids), -1, None, 0, False, False), key
                )
            else:
                state = self._advance(parent, key[-1:])
            if len(self._states) >= _REMEMBERED:
                del self._states[next(iter(self._states))]  # the oldest
            self._states[key] = state
        clock, ends, voice, duration, notes, _, marked = state
        return clock, list(ends), voice, duration, notes, marked

    def _advance(self, state: _State, ids: Sequence[int]) -> _State:
        """The scan state after reading `ids` on from `state`."""
        clock, ends_at, voice, duration, notes, ended, marked = state
        if ended:
            return state
        ends = list(ends_at)
        end_id = self.tokenizer.end_id
        for i in ids:
            if i == end_id:
                ended = True
                break
            v = self._voice_of[i]
            if v >= 0:
                voice, duration = v, None
            elif i in self._times:
                if voice >= 0 and duration is not None:
                    ends[voice] = clock + duration
                    notes += 1
                voice, duration = -1, None
                clock += self._time_units[i]
                marked = marked and not self._time_units[i]  # a new onset starts unmarked
            elif i in self._fermata:
                marked = True
            elif self._dur_units[i]:
                duration = self._dur_units[i]
        return clock, tuple(ends), voice, duration, notes, ended, marked

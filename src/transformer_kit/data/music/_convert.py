"""Between music21 streams and note events: the one place that knows music21's object model.

music21 is imported lazily (`_music21`), so the rest of the package imports without it.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from types import ModuleType
from typing import Any

from transformer_kit.tokenization.events import NoteEvent, Piece, sort_events

_log = logging.getLogger(__name__)

_INSTALL_HINT = 'pip install "transformer-kit[music]"'
# Onsets and durations are floats; music21 wants the exact fraction back (1/3, not 0.3333...).
# 64 covers 256th notes and every tuplet a tokenizer grid would produce.
_MAX_DENOMINATOR = 64


def _music21(caller: str) -> ModuleType:
    """Import music21 on first use, with an install hint when it is missing."""
    try:
        import music21
    except ImportError as err:
        raise ImportError(
            f"{caller} needs music21 for reading and writing scores; install it with "
            f"{_INSTALL_HINT}"
        ) from err
    return music21


def _score_parts(score: Any, m21: ModuleType) -> list[Any]:
    """Return the parts of a parsed file that hold pitched notes, in score order."""
    if isinstance(score, m21.stream.Opus):
        raise ValueError(f"the file holds {len(score.scores)} scores (an Opus); split it first")
    parts = list(score.parts) if isinstance(score, m21.stream.Score) else [score]
    return [p for p in parts if any(_is_pitched(n, m21) for n in p.recurse().notes)]


def _is_pitched(element: Any, m21: ModuleType) -> bool:
    return isinstance(element, m21.note.Note | m21.chord.Chord)


def _parts_to_piece(parts: Sequence[Any], m21: ModuleType, *, source: str) -> Piece:
    """Convert parts (voice 1 = first part) to sorted events; tied notes become one event.

    Ties are merged with music21's ``stripTies`` (matching by pitch), so a note tied across a
    barline is one event with the summed duration that starts in the bar of its first half:
    the events describe what sounds, not how it is notated, and a tokenizer sees one note.
    ``bar`` counts the part's measures from 0 (see `_measure_bars`). A note or chord with a
    `Fermata` expression gives its events ``fermata=True``; so does one on a later half of a tie,
    to the merged note.
    """
    events: list[NoteEvent] = []
    dropped = Counter[str]()
    for voice, part in enumerate(parts, start=1):
        events.extend(_part_events(part, voice, m21, dropped))
    for reason, count in sorted(dropped.items()):
        _log.info("%s: dropped %d %s", source, count, reason)
    return sort_events(events)


def _part_events(part: Any, voice: int, m21: ModuleType, dropped: Counter[str]) -> list[NoteEvent]:
    if not part.getElementsByClass(m21.stream.Measure):
        part = part.makeMeasures()  # bars from its time signatures, 4/4 when it has none
    late = _fermatas_after_ties(part, m21)
    stripped = part.stripTies(matchByPitch=True)
    measure_starts, measure_bars = _measure_bars(stripped.getElementsByClass(m21.stream.Measure))
    flat = stripped.flatten()
    key_changes = sorted(
        (float(k.offset), _sharps(k.sharps)) for k in flat.getElementsByClass(m21.key.KeySignature)
    )
    key_starts = [start for start, _ in key_changes]
    events = []
    for element in flat.notes:
        if not _is_pitched(element, m21):
            dropped["unpitched (percussion) notes"] += 1
            continue
        if element.duration.isGrace or element.quarterLength == 0:
            # A grace note has no duration of its own; the events describe metric time only.
            dropped["grace notes"] += 1
            continue
        onset = float(element.offset)
        bar = measure_bars[max(0, bisect_right(measure_starts, onset) - 1)]
        at_key = bisect_right(key_starts, onset) - 1
        key = key_changes[at_key][1] if at_key >= 0 else 0
        fermata = _has_fermata(element, m21)
        end = onset + float(element.quarterLength)
        for pitch in element.pitches:
            if not 0 <= pitch.midi <= 127:
                dropped["notes outside MIDI pitch range 0-127"] += 1
                continue
            events.append(
                NoteEvent(
                    pitch=pitch.midi,
                    voice=voice,
                    onset=onset,
                    duration=float(element.quarterLength),
                    bar=bar,
                    key=key,
                    fermata=fermata or any(p == pitch.midi and onset < t < end for t, p in late),
                )
            )
    return events


def _has_fermata(element: Any, m21: ModuleType) -> bool:
    return any(isinstance(x, m21.expressions.Fermata) for x in element.expressions)


def _fermatas_after_ties(part: Any, m21: ModuleType) -> list[tuple[float, int]]:
    """(onset, MIDI pitch) of each fermata on the later half of a tie, which `stripTies` drops
    when it merges the tied notes into the first."""
    return [
        (float(element.offset), pitch.midi)
        for element in part.flatten().notes
        if _is_pitched(element, m21)
        and _has_fermata(element, m21)
        and element.tie is not None
        and element.tie.type in ("stop", "continue")
        for pitch in element.pitches
    ]


def _measure_bars(measures: Sequence[Any]) -> tuple[list[float], list[int]]:
    """Return each measure's start and bar index: measures counted from 0 (a pickup is bar 0).

    A measure numbered like the one before it plus a suffix ("4" then "4a") continues that bar:
    the Bach corpus splits phrase-ending bars that way in about 200 of its chorales. Counting
    measures rather than subtracting numbers keeps bars growing with time where numbering is
    irregular (a few chorales go 10, 13, 14, 13, 14).
    """
    starts: list[float] = []
    bars: list[int] = []
    previous = None
    for measure in measures:
        if not bars:
            bars.append(0)
        elif measure.numberSuffix and measure.number == previous:
            bars.append(bars[-1])
        else:
            bars.append(bars[-1] + 1)
        starts.append(float(measure.offset))
        previous = measure.number
    return starts, bars


def _sharps(sharps: int) -> int:
    # Key signatures past 7 accidentals exist only in theory; use the enharmonic one (8 -> -4).
    if sharps > 7:
        return sharps - 12
    if sharps < -7:
        return sharps + 12
    return sharps


def _piece_to_score(piece: Piece, m21: ModuleType, *, tempo_bpm: float | None = None) -> Any:
    """Build a music21 Score with one part per voice (in voice order) from sorted events."""
    score = m21.stream.Score()
    meter = _meter(piece)
    for index, voice in enumerate(sorted({e.voice for e in piece})):
        part = m21.stream.Part(id=f"voice{voice}")
        part.partName = f"Voice {voice}"
        if index == 0 and tempo_bpm is not None:
            part.insert(0, m21.tempo.MetronomeMark(number=tempo_bpm))
        for offset, signature in meter:
            part.insert(offset, m21.meter.TimeSignature(signature))
        events = [e for e in piece if e.voice == voice]
        key = None
        for e in events:
            if e.key != key:
                key = e.key
                part.insert(_exact(e.onset), m21.key.KeySignature(key))
        held = {(_exact(e.onset), _exact(e.duration)) for e in events if e.fermata}
        for (onset, duration), pitches in _simultaneous(events).items():
            if len(pitches) == 1:
                element = m21.note.Note(pitches[0], quarterLength=duration)
            else:
                element = m21.chord.Chord(pitches, quarterLength=duration)
            if (onset, duration) in held:
                element.expressions.append(m21.expressions.Fermata())
            part.insert(onset, element)
        score.insert(0, part)
    return score


def _simultaneous(events: Sequence[NoteEvent]) -> dict[tuple[Fraction, Fraction], list[int]]:
    """Group one voice's events that start and end together, so they are written as a chord."""
    groups: dict[tuple[Fraction, Fraction], list[int]] = {}
    for e in events:
        pitches = groups.setdefault((_exact(e.onset), _exact(e.duration)), [])
        if e.pitch not in pitches:
            pitches.append(e.pitch)
    return groups


def _meter(piece: Piece) -> list[tuple[Fraction, str]]:
    """Infer time signatures ``[(offset, "3/4")]`` from the events' bar numbers.

    A bar is taken to start at its earliest onset. The bar length is the commonest distance
    between the starts of consecutive bars; each later bar then votes for where bar 1 begins,
    and if that is before one bar length, bar 0 is a pickup and gets a time signature of its
    own length (``"1/4"`` then ``"3/4"``), so the bar numbers survive writing and reading.
    Returns ``[]`` when the events carry no bar numbers (all 0) or the lengths are not whole
    16th notes.
    """
    starts: dict[int, Fraction] = {}
    for e in piece:
        starts[e.bar] = min(starts.get(e.bar, _exact(e.onset)), _exact(e.onset))
    gaps = Counter(starts[b + 1] - starts[b] for b in starts if b + 1 in starts)
    gaps.pop(Fraction(0), None)
    if not gaps:
        return []
    length = max(gaps, key=lambda g: (gaps[g], g))  # the commonest; a tie goes to the longer
    votes = Counter(starts[b] - (b - 1) * length for b in starts if b >= 1)
    pickup = max(votes, key=lambda v: (votes[v], v))
    signature = _time_signature(length)
    if signature is None:
        return []
    if 0 < pickup < length and starts.get(0) == 0 and (short := _time_signature(pickup)):
        return [(Fraction(0), short), (pickup, signature)]
    return [(Fraction(0), signature)]


def _time_signature(length: Fraction) -> str | None:
    for denominator in (4, 8, 16):
        beats = length * denominator / 4
        if beats.denominator == 1 and beats > 0:
            return f"{beats.numerator}/{denominator}"
    return None


def _exact(value: float) -> Fraction:
    return Fraction(value).limit_denominator(_MAX_DENOMINATOR)

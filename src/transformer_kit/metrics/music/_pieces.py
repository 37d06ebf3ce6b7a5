"""Per-piece music metrics: each maps one `Piece` to a float (an int for `pitch_range`).

Every metric is defined for every piece: where there is nothing to measure (no note, no interval,
no n-gram) the value is 0 rather than NaN or an error, so degenerate samples land in the outer
bins of `overall_score` instead of vanishing from it. Formulas: docs/metrics.md.
    >>> notes = [NoteEvent(pitch, 1, float(i), 1.0) for i, pitch in enumerate((60, 64, 67, 60))]
    >>> estimate_key(notes), round(interval_entropy(notes), 4), pitch_range(notes)
    ((0, 'major'), 1.585, 7)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from itertools import pairwise
from operator import attrgetter

import numpy as np

from transformer_kit.tokenization.events import NoteEvent, Piece

__all__ = [
    "KRUMHANSL_MAJOR",
    "KRUMHANSL_MINOR",
    "METRIC_NAMES",
    "duration_entropy",
    "estimate_key",
    "interval_entropy",
    "notes_per_bar",
    "out_of_key_ratio",
    "piece_metrics",
    "pitch_range",
    "polyphony",
    "repetition",
]

# Krumhansl-Kessler probe-tone ratings, tonic first: C. L. Krumhansl and E. J. Kessler (1982),
# "Tracing the dynamic changes in perceived tonal organization in a spatial representation of
# musical keys", Psychological Review 89(4), 334-368; as tabulated in C. L. Krumhansl (1990),
# Cognitive Foundations of Musical Pitch, Oxford University Press, Table 2.1.
KRUMHANSL_MAJOR: tuple[float, ...] = (
    6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88,
)  # fmt: skip
KRUMHANSL_MINOR: tuple[float, ...] = (
    6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17,
)  # fmt: skip

METRIC_NAMES: tuple[str, ...] = (
    "out_of_key",
    "interval_entropy",
    "duration_entropy",
    "pitch_range",
    "notes_per_bar",
    "polyphony",
    "repetition",
)
"""The keys of `piece_metrics`, in order; `overall_score` averages over all of them."""

_MODES = ("major", "minor")
_SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}  # natural scales
# Durations are compared after rounding, so that a triplet eighth (1/3 of a quarter) computed
# two ways is one value.
_DURATION_DECIMALS = 6
_CANONICAL = attrgetter("voice", "onset", "pitch", "duration")


def _key_templates() -> np.ndarray:
    # Row 12 * mode + tonic: the profile rotated to start at `tonic`, centred and of unit norm,
    # so its dot product with a centred, unit-norm histogram is the Pearson correlation.
    rows = np.stack(
        [np.roll(np.asarray(p), t) for p in (KRUMHANSL_MAJOR, KRUMHANSL_MINOR) for t in range(12)]
    )  # (24, 12)
    centred = rows - rows.mean(axis=1, keepdims=True)
    return centred / np.linalg.norm(centred, axis=1, keepdims=True)


_KEY_TEMPLATES = _key_templates()


def estimate_key(piece: Piece, *, weighted: bool = True) -> tuple[int, str]:
    """Return the Krumhansl-Schmuckler key: ``(tonic pitch class 0-11, "major" | "minor")``.

    The key is the one of the 24 whose rotated Krumhansl-Kessler profile has the highest Pearson
    correlation with the piece's pitch-class histogram (summed durations when ``weighted``, note
    counts otherwise). Ties go to the first key in the order C..B major, then C..B minor; a flat
    histogram correlates 0 with every key and so gives C major.

    Raises:
        ValueError: The piece is empty.
    """
    if not piece:
        raise ValueError("estimate_key: piece must hold at least one note, got an empty piece")
    index = int(np.argmax(_key_correlations(sorted(piece, key=_CANONICAL), weighted=weighted)))
    return index % 12, _MODES[index // 12]


def out_of_key_ratio(piece: Piece) -> float:
    """Fraction of notes (counted, not weighted by duration) outside the key's natural scale.

    The key is `estimate_key` with duration weighting; the scale is its natural major or natural
    minor scale. 0.0 for an empty piece.
    """
    return _out_of_key(sorted(piece, key=_CANONICAL))


def interval_entropy(piece: Piece, *, clip: int = 12) -> float:
    """Shannon entropy in bits of the melodic intervals between consecutive notes of each voice.

    Intervals are signed semitones clipped to [-clip, clip] and pooled over voices; 0.0 when no
    voice has two notes.
    """
    if isinstance(clip, bool) or not isinstance(clip, int) or clip < 0:
        raise ValueError(f"interval_entropy: clip must be an int >= 0, got {clip!r}")
    return _entropy(Counter(step for voice in _voices(piece) for step in _steps(voice, clip)))


def duration_entropy(piece: Piece) -> float:
    """Shannon entropy in bits of the note durations of all voices; 0.0 for an empty piece."""
    return _entropy(Counter(round(note.duration, _DURATION_DECIMALS) for note in piece))


def pitch_range(piece: Piece) -> int:
    """Highest minus lowest MIDI pitch, in semitones; 0 for an empty piece."""
    if not piece:
        return 0
    pitches = [note.pitch for note in piece]
    return max(pitches) - min(pitches)


def notes_per_bar(piece: Piece) -> float:
    """Notes divided by the bars spanned, ``max(bar) - min(bar) + 1``; 0.0 for an empty piece."""
    if not piece:
        return 0.0
    bars = [note.bar for note in piece]
    return len(piece) / (max(bars) - min(bars) + 1)


def polyphony(piece: Piece) -> float:
    """Time-weighted mean number of sounding voices over the time when at least one sounds.

    A voice sounds on the union of its notes' ``[onset, offset)`` intervals, so overlapping notes
    in one voice count once; times when every voice rests are left out. 0.0 for an empty piece.
    """
    return _polyphony(_voices(piece))


def repetition(piece: Piece, *, n: int = 4) -> float:
    """Fraction of the (interval, duration) n-grams within voices that repeat an earlier one.

    Each voice becomes tokens ``(pitch_i - pitch_(i-1), duration_i)`` for its notes after the
    first; over the n-grams of consecutive tokens, pooled over voices, the result is
    ``1 - distinct / total``: transposition-invariant, in [0, 1), and 0.0 when no voice has
    ``n + 1`` notes.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"repetition: n must be an int >= 1, got {n!r}")
    return _repetition(_voices(piece), n)


def piece_metrics(piece: Piece) -> dict[str, float]:
    """Every metric of one piece with default settings, keyed by `METRIC_NAMES` in order."""
    voices = _voices(piece)
    notes = [note for voice in voices for note in voice]
    return {
        "out_of_key": _out_of_key(notes),
        "interval_entropy": _entropy(Counter(s for voice in voices for s in _steps(voice, 12))),
        "duration_entropy": duration_entropy(notes),
        "pitch_range": float(pitch_range(notes)),
        "notes_per_bar": notes_per_bar(notes),
        "polyphony": _polyphony(voices),
        "repetition": _repetition(voices, 4),
    }


# Private helpers below take notes in canonical order (by voice, onset, pitch, duration), so every
# result depends on the set of events only, never on the order they arrive in.
def _voices(piece: Piece) -> list[list[NoteEvent]]:
    """The notes of each voice in onset order (then pitch), voices in ascending order."""
    voices: dict[int, list[NoteEvent]] = {}
    for note in sorted(piece, key=_CANONICAL):
        voices.setdefault(note.voice, []).append(note)
    return list(voices.values())


def _steps(voice: Sequence[NoteEvent], clip: int) -> list[int]:
    """Melodic intervals between consecutive notes of one voice, clipped to [-clip, clip]."""
    return [max(-clip, min(clip, b.pitch - a.pitch)) for a, b in pairwise(voice)]


def _key_correlations(notes: Sequence[NoteEvent], *, weighted: bool) -> np.ndarray:
    """Pearson correlation of the pitch-class histogram with each of the 24 keys, shape (24,)."""
    classes = [note.pitch % 12 for note in notes]
    weights = [note.duration for note in notes] if weighted else None
    histogram = np.bincount(classes, weights=weights, minlength=12).astype(float)
    centred = histogram - histogram.mean()
    norm = float(np.linalg.norm(centred))
    if norm <= 1e-12 * float(histogram.max()):  # flat up to rounding: no key is preferred
        return np.zeros(len(_KEY_TEMPLATES))
    return _KEY_TEMPLATES @ (centred / norm)


def _out_of_key(notes: Sequence[NoteEvent]) -> float:
    if not notes:
        return 0.0
    index = int(np.argmax(_key_correlations(notes, weighted=True)))
    tonic, mode = index % 12, _MODES[index // 12]
    scale = {(tonic + degree) % 12 for degree in _SCALES[mode]}
    return sum(note.pitch % 12 not in scale for note in notes) / len(notes)


def _polyphony(voices: Sequence[Sequence[NoteEvent]]) -> float:
    # (time, +1) where a voice starts sounding, (time, -1) where it stops.
    changes: list[tuple[float, int]] = []
    for voice in voices:
        start, end = voice[0].onset, voice[0].offset
        for note in voice[1:]:
            if note.onset > end:
                changes += [(start, 1), (end, -1)]
                start, end = note.onset, note.offset
            else:
                end = max(end, note.offset)
        changes += [(start, 1), (end, -1)]
    sounding = weighted = 0.0
    active, previous = 0, 0.0
    for time, delta in sorted(changes):
        if active:
            sounding += time - previous
            weighted += active * (time - previous)
        active, previous = active + delta, time
    return weighted / sounding if sounding > 0 else 0.0


def _repetition(voices: Sequence[Sequence[NoteEvent]], n: int) -> float:
    grams: Counter[tuple[tuple[int, float], ...]] = Counter()
    for voice in voices:
        tokens = [
            (b.pitch - a.pitch, round(b.duration, _DURATION_DECIMALS)) for a, b in pairwise(voice)
        ]
        grams.update(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    total = sum(grams.values())
    return (total - len(grams)) / total if total else 0.0


def _entropy(counts: Mapping[Hashable, int]) -> float:
    # fsum: exactly rounded, so the result does not depend on the order of the counts.
    total = sum(counts.values())
    return math.fsum(c / total * math.log2(total / c) for c in counts.values()) if total else 0.0

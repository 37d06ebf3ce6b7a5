"""Note events: the plain record that music data, `MusicTokenizer` and the music metrics share.

A piece is a list of `NoteEvent`s sorted by onset (then voice, then pitch). Times are in quarter
notes (quarter lengths), measured from the start of the piece.
    >>> NoteEvent(pitch=60, voice=1, onset=0.0, duration=1.0, bar=0).name
    'C4'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["NoteEvent", "Piece", "pitch_name", "sort_events"]

_PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def pitch_name(pitch: int) -> str:
    """Return the scientific pitch name of a MIDI pitch with sharps: 60 -> 'C4', 61 -> 'C#4'."""
    if isinstance(pitch, bool) or not isinstance(pitch, int) or not 0 <= pitch <= 127:
        raise ValueError(f"pitch_name: pitch must be an int MIDI pitch in [0, 127], got {pitch!r}")
    return f"{_PITCH_CLASSES[pitch % 12]}{pitch // 12 - 1}"


@dataclass(frozen=True, slots=True)
class NoteEvent:
    """One sounding note of one voice.

    Args:
        pitch: MIDI pitch, 0-127 (60 is middle C, C4).
        voice: 1-based part number; in a chorale 1 is the soprano and 4 the bass.
        onset: start time in quarter lengths from the start of the piece, >= 0.
        duration: length in quarter lengths, > 0.
        bar: index of the bar (measure) the note starts in, >= 0, counted from the first bar.
        key: key signature as a count of sharps (negative for flats), -7..7; 0 when unknown.
        fermata: whether the note carries a fermata (a pause; in the chorales, the end of a
            phrase). False when unknown, e.g. for notes read from MIDI, which has no fermatas.
    """

    pitch: int
    voice: int
    onset: float
    duration: float
    bar: int = 0
    key: int = 0
    fermata: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.pitch, bool) or not isinstance(self.pitch, int):
            raise ValueError(f"NoteEvent: pitch must be an int in [0, 127], got {self.pitch!r}")
        if not 0 <= self.pitch <= 127:
            raise ValueError(f"NoteEvent: pitch must be an int in [0, 127], got {self.pitch!r}")
        if isinstance(self.voice, bool) or not isinstance(self.voice, int) or self.voice < 1:
            raise ValueError(f"NoteEvent: voice must be an int >= 1, got {self.voice!r}")
        if not _is_number(self.onset) or not math.isfinite(self.onset) or self.onset < 0:
            raise ValueError(f"NoteEvent: onset must be a finite number >= 0, got {self.onset!r}")
        if not _is_number(self.duration) or not math.isfinite(self.duration):
            raise ValueError(
                f"NoteEvent: duration must be a finite number > 0, got {self.duration!r}"
            )
        if self.duration <= 0:
            raise ValueError(
                f"NoteEvent: duration must be a finite number > 0, got {self.duration!r}"
            )
        if isinstance(self.bar, bool) or not isinstance(self.bar, int) or self.bar < 0:
            raise ValueError(f"NoteEvent: bar must be an int >= 0, got {self.bar!r}")
        if isinstance(self.key, bool) or not isinstance(self.key, int) or not -7 <= self.key <= 7:
            raise ValueError(f"NoteEvent: key must be an int in [-7, 7], got {self.key!r}")
        if not isinstance(self.fermata, bool):
            raise ValueError(f"NoteEvent: fermata must be a bool, got {self.fermata!r}")

    @property
    def offset(self) -> float:
        """End time: ``onset + duration``."""
        return self.onset + self.duration

    @property
    def name(self) -> str:
        """Scientific pitch name with sharps, e.g. 'F#3'."""
        return pitch_name(self.pitch)


Piece = list[NoteEvent]
"""A piece of music: note events sorted by `sort_events` order."""


def sort_events(events: Sequence[NoteEvent]) -> Piece:
    """Return the events in canonical order: by onset, then voice, then pitch."""
    return sorted(events, key=lambda e: (e.onset, e.voice, e.pitch))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)

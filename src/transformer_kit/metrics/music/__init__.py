"""Music metrics on note events, a corpus-relative score and musical early stopping.

Per-piece metrics map a `Piece` (a list of `NoteEvent`) to a number; `overall_score` compares
their distributions with a reference corpus held in a `MusicProfile`; `MusicalEarlyStopping`
blends that score with the validation loss. Nothing here needs music21. See docs/metrics.md.
    >>> from transformer_kit.tokenization.events import NoteEvent
    >>> notes = [NoteEvent(pitch, 1, float(i), 1.0) for i, pitch in enumerate((60, 64, 67, 72))]
    >>> estimate_key(notes), pitch_range(notes), polyphony(notes)
    ((0, 'major'), 12, 1.0)
"""

from __future__ import annotations

from transformer_kit.metrics.music._corpus import (
    MusicProfile,
    corpus_summary,
    interval_bigram_overlap,
    overall_score,
)
from transformer_kit.metrics.music._pieces import (
    KRUMHANSL_MAJOR,
    KRUMHANSL_MINOR,
    METRIC_NAMES,
    duration_entropy,
    estimate_key,
    interval_entropy,
    notes_per_bar,
    out_of_key_ratio,
    piece_metrics,
    pitch_range,
    polyphony,
    repetition,
)
from transformer_kit.metrics.music._stopping import MusicalEarlyStopping

__all__ = [
    "KRUMHANSL_MAJOR",
    "KRUMHANSL_MINOR",
    "METRIC_NAMES",
    "MusicProfile",
    "MusicalEarlyStopping",
    "corpus_summary",
    "duration_entropy",
    "estimate_key",
    "interval_bigram_overlap",
    "interval_entropy",
    "notes_per_bar",
    "out_of_key_ratio",
    "overall_score",
    "piece_metrics",
    "pitch_range",
    "polyphony",
    "repetition",
]

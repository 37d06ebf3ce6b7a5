"""Corpus-level comparison: a reference `MusicProfile`, `overall_score` and the bigram overlap.

`overall_score` compares the distribution of each per-piece metric over generated pieces with
its distribution over a reference corpus; `interval_bigram_overlap` compares note order, which
per-piece statistics miss. Build the profile once and reuse it at every evaluation.
    >>> corpus = [[NoteEvent(60 + i % 5, 1, float(i), 1.0) for i in range(12)]]
    >>> profile = MusicProfile.from_pieces(corpus)
    >>> overall_score(corpus, profile), interval_bigram_overlap(corpus, profile)
    (100.0, 1.0)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from itertools import pairwise
from typing import TypeVar

import numpy as np

from transformer_kit.metrics.music._pieces import METRIC_NAMES, _steps, _voices, piece_metrics
from transformer_kit.tokenization.events import NoteEvent, Piece

__all__ = [
    "MusicProfile",
    "corpus_summary",
    "interval_bigram_overlap",
    "overall_score",
]

_K = TypeVar("_K", bound=Hashable)
_BIGRAM_CLIP = 12  # semitones; an octave leap or more is one symbol either way
_PERCENTILES = (1.0, 99.0)  # bins span these reference percentiles, so outliers do not stretch them
_MARGIN = 0.1  # widening on each side, as a fraction of the percentile range


class MusicProfile:
    """A reference corpus reduced to what scoring needs: per-metric values and interval bigrams.

    Binning, per metric and number of bins: ``lo, hi`` are the 1st and 99th percentiles of the
    reference values (numpy's linear interpolation); ``bins`` equal bins span
    ``[lo - 0.1 (hi - lo), hi + 0.1 (hi - lo)]``, or ``[lo - 0.5, hi + 0.5]`` when ``hi == lo``;
    values outside that span count in the end bins. The bins depend on the reference alone, so
    scores against one profile are comparable across calls and models.

    Args:
        values: For each name in `METRIC_NAMES`, the metric's value on every reference piece.
        bigrams: Counts of consecutive interval pairs within voices (intervals clipped to +-12).

    Example:
        >>> profile = MusicProfile.from_pieces(chorales)  # doctest: +SKIP
        >>> overall_score(samples, profile)  # doctest: +SKIP
    """

    def __init__(
        self, values: Mapping[str, Sequence[float]], bigrams: Mapping[tuple[int, int], int]
    ) -> None:
        if set(values) != set(METRIC_NAMES):
            raise ValueError(
                f"MusicProfile: values must have exactly the keys {METRIC_NAMES}, "
                f"got {sorted(values)}"
            )
        self.values: dict[str, np.ndarray] = {}
        """Reference value of each metric on each reference piece."""
        for name in METRIC_NAMES:
            array = np.asarray(values[name], dtype=float)
            if array.ndim != 1 or array.size == 0 or not np.isfinite(array).all():
                raise ValueError(
                    f"MusicProfile: values[{name!r}] must be a non-empty sequence of finite "
                    f"numbers, got {values[name]!r}"
                )
            self.values[name] = array
        self.bigrams: Counter[tuple[int, int]] = Counter(dict(bigrams))
        """Interval-pair counts over the reference corpus."""
        self._binned: dict[tuple[str, int], tuple[np.ndarray, list[int]]] = {}

    @classmethod
    def from_pieces(cls, pieces: Sequence[Piece]) -> MusicProfile:
        """Compute the profile of a reference corpus.

        Raises:
            ValueError: ``pieces`` is empty.
        """
        _check_pieces(pieces, "MusicProfile.from_pieces")
        if not pieces:
            raise ValueError("MusicProfile.from_pieces: pieces must hold at least one piece")
        rows = [piece_metrics(piece) for piece in pieces]
        values = {name: [row[name] for row in rows] for name in METRIC_NAMES}
        return cls(values, _bigrams(pieces))

    @property
    def num_pieces(self) -> int:
        """Number of reference pieces."""
        return len(self.values[METRIC_NAMES[0]])

    def edges(self, name: str, *, bins: int = 20) -> np.ndarray:
        """The ``bins + 1`` bin edges of metric `name` (see the class docstring)."""
        return self._binning(name, bins)[0].copy()

    def overlap(self, name: str, values: Iterable[float], *, bins: int = 20) -> float:
        """Overlapping area, in [0, 1], of the histograms of `values` and of the reference.

        ``sum_b min(p_b, q_b)`` over the bins of `edges`, each histogram normalised to sum 1;
        0.0 when `values` is empty. Computed on integer counts, so equal data gives exactly 1.
        """
        edges, reference = self._binning(name, bins)
        counts = _bin_counts(np.asarray(list(values), dtype=float), edges)
        return _count_overlap(dict(enumerate(counts)), dict(enumerate(reference)))

    def _binning(self, name: str, bins: int) -> tuple[np.ndarray, list[int]]:
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"MusicProfile: bins must be an int >= 1, got {bins!r}")
        if name not in self.values:
            raise KeyError(f"MusicProfile: unknown metric {name!r}; known: {METRIC_NAMES}")
        if (name, bins) not in self._binned:
            lo, hi = (float(p) for p in np.percentile(self.values[name], _PERCENTILES))
            margin = _MARGIN * (hi - lo) if hi > lo else 0.5
            edges = np.linspace(lo - margin, hi + margin, bins + 1)
            self._binned[name, bins] = (edges, _bin_counts(self.values[name], edges))
        return self._binned[name, bins]

    def __repr__(self) -> str:
        return f"MusicProfile(<{self.num_pieces} pieces, {sum(self.bigrams.values())} bigrams>)"


def overall_score(
    pieces: Sequence[Piece], reference: MusicProfile | Sequence[Piece], *, bins: int = 20
) -> float:
    """Mean over `METRIC_NAMES` of `MusicProfile.overlap` with the reference, times 100.

    In [0, 100]: exactly 100 when `pieces` is the reference corpus itself, 0.0 when `pieces` is
    empty. The bins come from the reference alone, so the score is not symmetric: swapping the
    arguments can change it.

    Example:
        >>> profile = MusicProfile.from_pieces(chorales)  # doctest: +SKIP
        >>> overall_score(samples, profile)  # doctest: +SKIP
    """
    _check_pieces(pieces, "overall_score")
    profile = _as_profile(reference, "overall_score")
    return _score_rows([piece_metrics(piece) for piece in pieces], profile, bins=bins)


def interval_bigram_overlap(
    pieces: Sequence[Piece], reference: MusicProfile | Sequence[Piece]
) -> float:
    """Overlap, in [0, 1], of the distributions of consecutive melodic-interval pairs.

    The pairs ``(i_k, i_(k+1))`` of successive intervals (clipped to +-12) within each voice are
    pooled over all pieces on each side; the result is ``sum min(p, q)``, exactly 1 for equal
    corpora and 0.0 when either side has no pair. Symmetric in its arguments.
    """
    _check_pieces(pieces, "interval_bigram_overlap")
    profile = _as_profile(reference, "interval_bigram_overlap")
    return _count_overlap(_bigrams(pieces), profile.bigrams)


def corpus_summary(pieces: Sequence[Piece]) -> dict[str, float]:
    """Mean, 5th and 95th percentiles of each metric and of the note count, over `pieces`.

    Keys are ``f"{name}_mean"``, ``f"{name}_p5"`` and ``f"{name}_p95"`` for each name in
    `METRIC_NAMES` and for ``"notes"``, plus ``"pieces"``. Percentiles use numpy's linear
    interpolation.

    Raises:
        ValueError: ``pieces`` is empty.
    """
    _check_pieces(pieces, "corpus_summary")
    if not pieces:
        raise ValueError("corpus_summary: pieces must hold at least one piece")
    rows = [{**piece_metrics(piece), "notes": float(len(piece))} for piece in pieces]
    summary: dict[str, float] = {"pieces": float(len(pieces))}
    for name in (*METRIC_NAMES, "notes"):
        values = np.asarray([row[name] for row in rows])
        p5, p95 = np.percentile(values, [5.0, 95.0])
        summary[f"{name}_mean"] = float(values.mean())
        summary[f"{name}_p5"] = float(p5)
        summary[f"{name}_p95"] = float(p95)
    return summary


def _score_rows(rows: Sequence[Mapping[str, float]], profile: MusicProfile, *, bins: int) -> float:
    """`overall_score` from precomputed `piece_metrics` rows."""
    profile.edges(METRIC_NAMES[0], bins=bins)  # checks `bins` even when there are no rows
    if not rows:
        return 0.0
    overlaps = [profile.overlap(name, [r[name] for r in rows], bins=bins) for name in METRIC_NAMES]
    # Each overlap is <= 1 exactly, so the mean of floats stays <= 1 and the score <= 100.
    return 100.0 * sum(overlaps) / len(overlaps)


def _bigrams(pieces: Iterable[Piece]) -> Counter[tuple[int, int]]:
    counts: Counter[tuple[int, int]] = Counter()
    for piece in pieces:
        for voice in _voices(piece):
            counts.update(pairwise(_steps(voice, _BIGRAM_CLIP)))
    return counts


def _bin_counts(values: np.ndarray, edges: np.ndarray) -> list[int]:
    """Counts per bin of `edges`, with values beyond either end counted in the end bin."""
    index = np.searchsorted(edges, values, side="right") - 1
    counts = np.bincount(np.clip(index, 0, len(edges) - 2), minlength=len(edges) - 1)
    return [int(c) for c in counts]


def _count_overlap(a: Mapping[_K, int], b: Mapping[_K, int]) -> float:
    """``sum_k min(a_k / |a|, b_k / |b|)`` in exact integer arithmetic; 0.0 if either is empty."""
    size_a, size_b = sum(a.values()), sum(b.values())
    if not size_a or not size_b:
        return 0.0
    shared = sum(min(count * size_b, b[key] * size_a) for key, count in a.items() if key in b)
    return shared / (size_a * size_b)


def _as_profile(reference: MusicProfile | Sequence[Piece], where: str) -> MusicProfile:
    if isinstance(reference, MusicProfile):
        return reference
    _check_pieces(reference, where)
    if not reference:
        raise ValueError(f"{where}: reference must hold at least one piece or be a MusicProfile")
    return MusicProfile.from_pieces(reference)


def _check_pieces(pieces: object, where: str) -> None:
    if not isinstance(pieces, Sequence) or isinstance(pieces, str):
        raise TypeError(f"{where}: expected a sequence of pieces, got {type(pieces).__name__}")
    if pieces and isinstance(pieces[0], NoteEvent):
        raise TypeError(
            f"{where}: expected a sequence of pieces (lists of NoteEvent) but got one piece; "
            "wrap it in a list"
        )

"""Leak-free deterministic splits: pieces that share a melody, and duplicates, share a split."""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Sequence
from itertools import pairwise

from transformer_kit.tokenization.events import NoteEvent, Piece

_SPLITS = ("train", "val", "test")
# Near-identical melodies (see `melody_groups`). Measured on the 368 Bach chorales (docs/data.md):
# every pair of melodies within 30% edit distance lands in one group, and the largest group (11)
# is exactly the settings of "Herzlich tut mich verlangen". Shorter runs or a lower share chain
# unrelated tunes into groups of 16 to 146.
_FULL_NGRAM = 8
_BEAT_NGRAM = 6
_MIN_SHARED = 0.35


def melody_groups(pieces: Sequence[Sequence[NoteEvent]]) -> list[list[int]]:
    """Group pieces whose top-voice melodies are identical or near-identical.

    A piece's melody is its first voice (the lowest voice number; the soprano in a chorale),
    one pitch per onset (the highest), repeated pitches merged, written as intervals in
    semitones, so a transposed copy has the same melody. Its beat melody keeps only notes that
    start on a quarter-note beat, which removes the passing eighths that most often tell two
    harmonisations of one tune apart. Two pieces are linked when their melodies are equal, or
    when at least 35% of the distinct 8-interval runs of the shorter melody occur in the other,
    or 35% of the 6-interval runs of the shorter beat melody do. Sharing runs rather than
    aligning whole melodies also links a tune whose repeat is written out to one that uses a
    repeat sign. Groups are the connected pieces (linking is transitive).

    Returns:
        Lists of indices into ``pieces``, each sorted, ordered by their first index; every
        index appears once (a piece with no near-identical partner is a group of one).

    Raises:
        ValueError: If ``pieces`` is not a sequence of sequences of `NoteEvent`.
    """
    _check_pieces(pieces, "melody_groups")
    parent = list(range(len(pieces)))
    full = [_melody(piece, on_beats=False) for piece in pieces]
    beat = [_melody(piece, on_beats=True) for piece in pieces]
    _link_equal(full, parent)
    _link_shared_runs([_runs(m, _FULL_NGRAM) for m in full], parent)
    _link_shared_runs([_runs(m, _BEAT_NGRAM) for m in beat], parent)
    return _components(parent)


def split_pieces(
    pieces: Sequence[Piece],
    *,
    fractions: tuple[float, float, float] = (0.9, 0.05, 0.05),
    seed: int = 0,
    group_key: Callable[[Piece], Hashable] | None = None,
) -> dict[str, list[Piece]]:
    """Split pieces into ``{"train", "val", "test"}`` without separating related pieces.

    Pieces are first grouped: by `melody_groups` when ``group_key`` is None, else pieces with
    equal ``group_key(piece)`` form a group; pieces with identical events always share a group.
    Each split has a target size, ``fraction * len(pieces)`` rounded so the targets add up.
    Groups are taken in the order of a SHA-256 hash of ``seed`` and their pieces' contents (so
    the split depends on neither input order nor file names), and each goes to the split with
    the most room left among those it fits in (to the one with the most room if it fits in
    none). Each split keeps the input order.

    Args:
        pieces: The pieces to split.
        fractions: Shares of train, val and test; each >= 0, summing to 1. Sizes hit their
            targets exactly when enough small groups remain to fill the gaps; a split with
            fraction 0 stays empty.
        seed: Another seed gives another split with the same grouping.
        group_key: Maps a piece to a hashable group label (e.g. its file's folder).

    Raises:
        ValueError: If an argument is malformed, or ``group_key`` returns an unhashable value.

    Example:
        >>> from transformer_kit.tokenization.events import NoteEvent
        >>> tune = [NoteEvent(60 + step, 1, float(i), 1.0) for i, step in enumerate([0, 2, 4])]
        >>> up = [NoteEvent(e.pitch + 5, 1, e.onset, e.duration) for e in tune]
        >>> parts = split_pieces([tune, up], fractions=(0.5, 0.5, 0.0))
        >>> sorted(len(v) for v in parts.values())  # a transposition never leaves its group
        [0, 0, 2]
    """
    splits, _ = _split_indices(pieces, fractions=fractions, seed=seed, group_key=group_key)
    return {name: [pieces[i] for i in indices] for name, indices in splits.items()}


def _split_indices(
    pieces: Sequence[Piece],
    *,
    fractions: tuple[float, float, float],
    seed: int,
    group_key: Callable[[Piece], Hashable] | None,
) -> tuple[dict[str, list[int]], list[list[int]]]:
    """Return the split as index lists, and the groups it kept together."""
    _check_pieces(pieces, "split_pieces")
    _check_fractions(fractions)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"split_pieces: seed must be an int, got {seed!r}")
    if group_key is not None and not callable(group_key):
        raise ValueError(
            f"split_pieces: group_key must be a function piece -> hashable or None, "
            f"got {group_key!r}"
        )
    digests = [_digest(piece) for piece in pieces]
    if group_key is None:
        groups = melody_groups(pieces)
        parent = [0] * len(pieces)
        for group in groups:
            for i in group:
                parent[i] = group[0]
    else:
        parent = list(range(len(pieces)))
        _link_equal([_call_key(group_key, piece) for piece in pieces], parent)
    _link_equal(digests, parent)  # exact duplicates, whatever the key says
    groups = _components(parent)
    order = sorted(groups, key=lambda g: _group_hash(sorted(digests[i] for i in g), seed))
    targets = _targets(fractions, len(pieces))
    counts = [0] * len(_SPLITS)
    splits: dict[str, list[int]] = {name: [] for name in _SPLITS}
    for group in order:
        room = [target - count for target, count in zip(targets, counts, strict=True)]
        fits = [i for i, r in enumerate(room) if r >= len(group)]
        best = max(fits or range(len(room)), key=lambda i: (room[i], -i))
        splits[_SPLITS[best]].extend(group)
        counts[best] += len(group)
    return {name: sorted(indices) for name, indices in splits.items()}, groups


def _targets(fractions: tuple[float, float, float], total: int) -> list[int]:
    """Split sizes: ``fraction * total`` rounded by largest remainder, so they sum to ``total``."""
    exact = [fraction * total for fraction in fractions]
    targets = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (targets[i] - exact[i], i))
    for i in by_remainder[: total - sum(targets)]:
        targets[i] += 1
    return targets


def _melody(piece: Sequence[NoteEvent], *, on_beats: bool) -> tuple[int, ...]:
    if not piece:
        return ()
    top = min(e.voice for e in piece)
    pitches: list[int] = []
    last_onset = -1.0
    for e in sorted((e for e in piece if e.voice == top), key=lambda e: (e.onset, -e.pitch)):
        if e.onset == last_onset or (on_beats and e.onset % 1):
            continue
        last_onset = e.onset
        if not pitches or pitches[-1] != e.pitch:
            pitches.append(e.pitch)
    return tuple(b - a for a, b in pairwise(pitches))


def _runs(melody: tuple[int, ...], n: int) -> set[tuple[int, ...]]:
    return {melody[i : i + n] for i in range(len(melody) - n + 1)}


def _link_shared_runs(runs: list[set[tuple[int, ...]]], parent: list[int]) -> None:
    """Link pieces where >= _MIN_SHARED of the smaller run set occurs in the other."""
    postings: defaultdict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, piece_runs in enumerate(runs):
        for run in piece_runs:
            postings[run].append(i)
    for i, piece_runs in enumerate(runs):
        shared = Counter(j for run in piece_runs for j in postings[run] if j > i)
        for j, count in shared.items():
            if count >= _MIN_SHARED * min(len(piece_runs), len(runs[j])):
                _union(parent, i, j)


def _link_equal(keys: Sequence[Hashable], parent: list[int]) -> None:
    first: dict[Hashable, int] = {}
    for i, key in enumerate(keys):
        _union(parent, first.setdefault(key, i), i)


def _call_key(group_key: Callable[[Piece], Hashable], piece: Piece) -> Hashable:
    key = group_key(piece)
    try:
        hash(key)
    except TypeError as err:
        raise ValueError(
            f"split_pieces: group_key must return a hashable value, got {key!r}"
        ) from err
    return key


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving keeps the trees flat
        i = parent[i]
    return i


def _union(parent: list[int], i: int, j: int) -> None:
    root_i, root_j = _find(parent, i), _find(parent, j)
    if root_i != root_j:
        parent[max(root_i, root_j)] = min(root_i, root_j)


def _components(parent: list[int]) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for i in range(len(parent)):
        groups.setdefault(_find(parent, i), []).append(i)
    return list(groups.values())


def _digest(piece: Sequence[NoteEvent]) -> str:
    # Leaves `fermata` out on purpose: the split (and "duplicates") stay those of cache v2.
    rows = sorted((e.onset, e.voice, e.pitch, e.duration, e.bar, e.key) for e in piece)
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def _group_hash(digests: list[str], seed: int) -> str:
    return hashlib.sha256(f"{seed}:{','.join(digests)}".encode()).hexdigest()


def _check_pieces(pieces: Sequence[Sequence[NoteEvent]], caller: str) -> None:
    if isinstance(pieces, str | bytes) or not isinstance(pieces, Sequence):
        raise ValueError(
            f"{caller}: pieces must be a list of pieces (lists of NoteEvent), "
            f"got {type(pieces).__name__}"
        )
    for i, piece in enumerate(pieces):
        if isinstance(piece, str | bytes) or not isinstance(piece, Sequence):
            raise ValueError(
                f"{caller}: pieces[{i}] must be a list of NoteEvent, got {type(piece).__name__}"
            )
        for event in piece:
            if not isinstance(event, NoteEvent):
                raise ValueError(
                    f"{caller}: pieces[{i}] must hold only NoteEvent, got a {type(event).__name__}"
                )


def _check_fractions(fractions: tuple[float, float, float]) -> None:
    allowed = "3 numbers >= 0 (train, val, test) that sum to 1"
    if not isinstance(fractions, tuple | list) or len(fractions) != 3:
        raise ValueError(f"split_pieces: fractions must be {allowed}, got {fractions!r}")
    for value in fractions:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"split_pieces: fractions must be {allowed}, got {fractions!r}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"split_pieces: fractions must be {allowed}, got {fractions!r}")
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-9):
        raise ValueError(f"split_pieces: fractions must be {allowed}, got {fractions!r}")

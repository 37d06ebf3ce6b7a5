"""What the seed's "tempo" jitter does to the Bach chorales, and how well the music grid fits them.

The seed document scales every duration of a piece by one factor drawn uniformly from
[0.85, 1.15] and re-quantizes. Durations are in beats (quarter notes), so this does not change
the tempo: it rewrites rhythms (a quarter note becomes a dotted eighth). This script measures
how often, on the chorales and the `MusicTokenizer` grid, and prints one JSON object:

- ``corpus``: pieces, notes, the MIDI pitch range (the tokenizer's default range adds 2
  semitones on each side) and the onset denominators (no triplets);
- ``grid``: the share of durations that are a DUR value, of onsets on the onset grid, of gaps
  between onsets that are one TIME step, and of pieces that `quantize` leaves unchanged;
- ``tempo_jitter``: the share of durations and of time deltas (gaps between successive
  onsets, i.e. the nonzero TIME tokens) whose grid value changes, with the commonest changes;
- ``rhythm_scale``: for `augment.RhythmScale`, the share of 256-token windows that halving or
  doubling maps exactly onto the grid (the others are left unchanged by the transform).

    .venv/bin/python bench/tempo_quantization.py            # all 368 chorales
    .venv/bin/python bench/tempo_quantization.py --limit 20 # a quick look

The chorales come from `transformer_kit.data.bach_chorales` (cached after the first call), or,
where that is not available, straight from music21's corpus (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import bisect
import json
import random
import sys
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from multiprocessing import Pool

import torch

from transformer_kit.augment import RhythmScale
from transformer_kit.tokenization import MusicTokenizer, NoteEvent
from transformer_kit.tokenization.events import Piece, sort_events

LOW, HIGH = 0.85, 1.15
"""The seed document's range for the per-piece factor."""

WINDOW = 256
"""Tokens per training window for the RhythmScale share (a typical block_size)."""


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Measure, print the JSON object and return it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-piece factors")
    parser.add_argument("--limit", type=int, default=None, help="use the first N pieces only")
    parser.add_argument(
        "--source", choices=("auto", "data", "music21"), default="auto", help="where to read"
    )
    args = parser.parse_args(argv)
    source, pieces = load_chorales(args.source)
    pieces = pieces[: args.limit] if args.limit else pieces
    tok = MusicTokenizer()
    result = {
        "source": source,
        "corpus": corpus_facts(pieces),
        "grid": grid_coverage(pieces, tok),
        "tempo_jitter": tempo_jitter(pieces, tok, seed=args.seed),
        "rhythm_scale": rhythm_scale_share(pieces, tok),
        "seed": args.seed,
    }
    print(json.dumps(result, indent=1))
    return result


def load_chorales(source: str) -> tuple[str, list[Piece]]:
    """All four-part chorales, from `bach_chorales` when it exists, else from music21."""
    if source in ("auto", "data"):
        try:
            from transformer_kit.data import bach_chorales
        except ImportError:
            if source == "data":
                raise
        else:
            splits = bach_chorales()
            return "transformer_kit.data.bach_chorales", [
                p for name in ("train", "val", "test") for p in splits[name]
            ]
    from music21 import corpus

    with Pool() as pool:
        parsed = pool.map(_parse_chorale, corpus.getComposer("bach"), chunksize=8)
    return "music21.corpus (four-part Bach files)", [p for p in parsed if p]


def _parse_chorale(path: object) -> Piece | None:
    """One corpus file as events when it has four parts: ties merged, grace notes dropped."""
    from music21 import corpus

    score = corpus.parse(path)
    if len(score.parts) != 4:
        return None
    events = []
    for voice, part in enumerate(score.parts, start=1):
        part = part.stripTies(matchByPitch=True)
        for bar, measure in enumerate(part.getElementsByClass("Measure")):
            for element in measure.notes:
                if element.duration.isGrace or element.quarterLength == 0:
                    continue
                onset = float(measure.offset + element.offset)
                for pitch in element.pitches:
                    events.append(
                        NoteEvent(pitch.midi, voice, onset, float(element.quarterLength), bar)
                    )
    return sort_events(events)


def corpus_facts(pieces: Sequence[Piece]) -> dict[str, object]:
    """Size, pitch range and the denominators of the onsets."""
    pitches = [e.pitch for p in pieces for e in p]
    denominators = Counter(
        Fraction(e.onset).limit_denominator(96).denominator for p in pieces for e in p
    )
    return {
        "pieces": len(pieces),
        "notes": len(pitches),
        "pitch_range": [min(pitches), max(pitches)],
        "onset_denominators": dict(sorted(denominators.items())),
    }


def grid_coverage(pieces: Sequence[Piece], tok: MusicTokenizer) -> dict[str, object]:
    """Shares of the corpus that the tokenizer's grid represents exactly."""
    durations = [e.duration for p in pieces for e in p]
    onsets = [e.onset for p in pieces for e in p]
    gaps = [gap for p in pieces for gap in _gaps(p)]
    off = Counter(d for d in durations if d not in tok.durations)
    same = sum(
        tok.quantize(p) == [_with(e, bar=e.bar - p[0].bar, key=0) for e in p] for p in pieces
    )
    return {
        "grid": tok.grid,
        "durations": list(tok.durations),
        "time_steps": list(tok.time_steps),
        "vocab_size": len(tok.vocab),
        "durations_exact": _share(len(durations) - off.total(), len(durations)),
        "durations_off_grid": {str(d): n for d, n in off.most_common()},
        "onsets_exact": _share(sum(_on_grid(t, tok.grid) for t in onsets), len(onsets)),
        "gaps_one_step": _share(sum(g in tok.time_steps for g in gaps), len(gaps)),
        "pieces_unchanged_by_quantize": _share(same, len(pieces)),
    }


def tempo_jitter(pieces: Sequence[Piece], tok: MusicTokenizer, *, seed: int) -> dict[str, object]:
    """The seed's jitter: per piece one factor in [0.85, 1.15]; each value re-snapped alone."""
    rng = random.Random(seed)
    durations: Counter[tuple[float, float]] = Counter()
    deltas: Counter[tuple[float, float]] = Counter()
    for piece in pieces:
        factor = rng.uniform(LOW, HIGH)
        for e in piece:
            before = _nearest(tok.durations, e.duration)
            durations[before, _nearest(tok.durations, e.duration * factor)] += 1
        for gap in _gaps(piece):
            before = _nearest(tok.time_steps, gap)
            deltas[before, _nearest(tok.time_steps, gap * factor)] += 1
    return {
        "factor_range": [LOW, HIGH],
        "durations": _changes(durations),
        "time_deltas": _changes(deltas),
    }


def rhythm_scale_share(pieces: Sequence[Piece], tok: MusicTokenizer) -> dict[str, float]:
    """Share of 256-token windows that `RhythmScale` halves or doubles (exact on the grid)."""
    windows = []
    for piece in pieces:
        ids = tok.encode(piece)
        windows += [ids[k : k + WINDOW + 1] for k in range(0, len(ids) - WINDOW, WINDOW)]
    batch = torch.tensor(windows)
    inputs, targets = batch[:, :-1], batch[:, 1:]
    shares = {}
    for factor in (0.5, 2.0):
        scale = RhythmScale.for_tokenizer(tok, factors=(factor,))
        scaled, _ = scale(inputs, targets, generator=torch.Generator())
        changed = (scaled != inputs).any(dim=1)
        shares[str(factor)] = round(float(changed.float().mean()), 4)
    return {"windows": len(windows), **shares}


def _gaps(piece: Piece) -> list[float]:
    """Times between successive distinct onsets: the nonzero note TIME values."""
    onsets = sorted({e.onset for e in piece})
    return [b - a for a, b in zip(onsets, onsets[1:], strict=False)]


def _nearest(values: Sequence[float], x: float) -> float:
    """The nearest of the increasing `values`; a tie goes to the smaller (as `quantize`)."""
    k = bisect.bisect_left(values, x)
    if k == 0 or k == len(values):
        return values[min(k, len(values) - 1)]
    lower, upper = values[k - 1], values[k]
    return lower if x - lower <= upper - x else upper


def _changes(pairs: Counter[tuple[float, float]]) -> dict[str, object]:
    total = pairs.total()
    moved = Counter({pair: n for pair, n in pairs.items() if pair[0] != pair[1]})
    return {
        "count": total,
        "changed": _share(moved.total(), total),
        "commonest_changes": {
            f"{a} -> {b}": _share(n, total) for (a, b), n in moved.most_common(8)
        },
    }


def _with(e: NoteEvent, *, bar: int, key: int) -> NoteEvent:
    # fermata=False: the default tokenizer drops fermatas, as it drops key and bar offsets.
    return NoteEvent(e.pitch, e.voice, e.onset, e.duration, bar, key, fermata=False)


def _on_grid(t: float, grid: float) -> bool:
    return abs(t / grid - round(t / grid)) < 1e-9


def _share(part: int, whole: int) -> float:
    return round(part / whole, 5) if whole else 0.0


if __name__ == "__main__":
    main(sys.argv[1:])

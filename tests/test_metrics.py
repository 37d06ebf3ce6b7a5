"""Metrics: perplexity; music metrics by hand and by law; musical early stopping in a Trainer."""

from __future__ import annotations

import doctest
import math
import random
import re
import statistics
from pathlib import Path
from types import MappingProxyType

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from transformer_kit import metrics
from transformer_kit.data import TokenDataset
from transformer_kit.logging import JSONLLogger, read_metrics
from transformer_kit.metrics import music, perplexity
from transformer_kit.metrics.music import (
    KRUMHANSL_MAJOR,
    KRUMHANSL_MINOR,
    METRIC_NAMES,
    MusicalEarlyStopping,
    MusicProfile,
    _corpus,
    _pieces,
    _stopping,
)
from transformer_kit.models import GPT, GPTConfig
from transformer_kit.sampling import generate
from transformer_kit.tokenization.events import NoteEvent
from transformer_kit.trainer import Trainer, TrainerConfig

N = NoteEvent
DURATIONS = (0.25, 0.5, 1.0, 1.5, 2.0, 1 / 3)


def melody(pitches, durations=None, *, voice=1, start=0.0):
    """One voice playing `pitches` back to back (durations default to 1 quarter)."""
    durations = durations or [1.0] * len(pitches)
    notes, onset = [], start
    for pitch, duration in zip(pitches, durations, strict=True):
        notes.append(N(pitch, voice, onset, duration, bar=int(onset // 4)))
        onset += duration
    return notes


def chorale_like(seed: int, bars: int = 8) -> list[NoteEvent]:
    """Four stepwise voices in a random major key: what a chorale's melodic lines look like."""
    rng = random.Random(seed)
    tonic, scale = rng.randrange(12), (0, 2, 4, 5, 7, 9, 11)
    notes = []
    for voice, degree in zip((1, 2, 3, 4), (35, 32, 28, 21), strict=True):
        onset = 0.0
        while onset < 4 * bars:
            duration = min(rng.choice((1.0, 1.0, 1.0, 0.5, 0.5, 2.0)), 4 * bars - onset)
            pitch = 12 + tonic + 12 * (degree // 7) + scale[degree % 7]
            notes.append(N(pitch, voice, onset, duration, bar=int(onset // 4)))
            degree += rng.choice((-1, -1, 1, 1, 0, -2, 2))
            onset += duration
    return notes


def shuffle_pitches(piece, seed):
    """The same onsets and durations, each voice's pitches in a random order."""
    rng, out = random.Random(seed), []
    for voice in sorted({n.voice for n in piece}):
        notes = [n for n in piece if n.voice == voice]
        pitches = [n.pitch for n in notes]
        rng.shuffle(pitches)
        out += [
            N(p, n.voice, n.onset, n.duration, bar=n.bar)
            for p, n in zip(pitches, notes, strict=True)
        ]
    return out


@st.composite
def pieces(draw, max_notes: int = 30):
    rows = draw(
        st.lists(
            st.tuples(
                st.integers(36, 84),
                st.integers(1, 4),
                st.integers(0, 63),
                st.sampled_from(DURATIONS),
            ),
            max_size=max_notes,
        )
    )
    return [
        N(pitch, voice, slot / 2, duration, bar=slot // 8) for pitch, voice, slot, duration in rows
    ]


def transpose(piece, semitones):
    return [N(n.pitch + semitones, n.voice, n.onset, n.duration, bar=n.bar) for n in piece]


def histogram(piece, *, weighted=True):
    counts = [0.0] * 12
    for note in piece:
        counts[note.pitch % 12] += note.duration if weighted else 1.0
    return counts


def reference_key_correlations(piece, *, weighted=True):
    """An independent loop: stdlib Pearson correlation with each rotated profile, C..B major
    then C..B minor (the histogram must not be constant)."""
    return [
        statistics.correlation(
            histogram(piece, weighted=weighted), [profile[(pc - tonic) % 12] for pc in range(12)]
        )
        for profile in (KRUMHANSL_MAJOR, KRUMHANSL_MINOR)
        for tonic in range(12)
    ]


# ---------------------------------------------------------------------------- perplexity
@pytest.mark.parametrize(
    "loss, expected",
    [
        (0.0, 1.0),
        (math.log(10.0), 10.0),
        (709.0, math.exp(709.0)),
        (710.0, math.inf),
        (1e308, math.inf),
    ],
)
def test_perplexity_is_exp_and_saturates_instead_of_overflowing(loss, expected):
    assert perplexity(loss) == pytest.approx(expected, rel=1e-12)


def test_perplexity_keeps_nan_and_refuses_non_numbers():
    assert math.isnan(perplexity(math.nan))
    with pytest.raises(TypeError, match="loss must be a real number"):
        perplexity("2.0")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- key estimation
def test_krumhansl_kessler_profiles_are_the_published_ratings():
    major = (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88)
    minor = (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)
    assert (KRUMHANSL_MAJOR, KRUMHANSL_MINOR) == (major, minor)


A_MINOR_LONG_G_MAJOR_SHORT = melody([57, 60, 64, 57], [4.0] * 4) + melody(
    [67, 69, 71, 72, 74, 76, 78, 79, 74, 71, 67, 78], [0.25] * 12, voice=2
)


@pytest.mark.parametrize(
    "piece, weighted, expected",
    [
        (melody([60, 62, 64, 65, 67, 69, 71, 72], [2, 1, 2, 1, 2, 1, 1, 2]), True, (0, "major")),
        (
            melody([69, 71, 72, 74, 76, 77, 79, 81, 76, 69], [2] + [1] * 7 + [2, 4]),
            True,
            (9, "minor"),
        ),
        (melody([66, 68, 70, 71, 73, 75, 77, 78], [2, 1, 2, 1, 2, 1, 1, 2]), True, (6, "major")),
        # Long A-minor triad, many short G-major notes: durations and counts disagree.
        (A_MINOR_LONG_G_MAJOR_SHORT, True, (9, "minor")),
        (A_MINOR_LONG_G_MAJOR_SHORT, False, (7, "major")),
        # A flat histogram correlates 0 with every key: C major by the tie rule, also when
        # rounding leaves the centred histogram at 1e-17 instead of 0 (durations 0.1).
        (melody(list(range(60, 72))), True, (0, "major")),
        (melody(list(range(60, 72)), [0.1] * 12), True, (0, "major")),
    ],
)
def test_estimate_key_on_hand_made_pieces(piece, weighted, expected):
    assert music.estimate_key(piece, weighted=weighted) == expected
    if len(set(histogram(piece, weighted=weighted))) > 1:
        correlations = reference_key_correlations(piece, weighted=weighted)
        tonic, mode = expected
        assert correlations.index(max(correlations)) == 12 * (mode == "minor") + tonic


@given(piece=pieces(), weighted=st.booleans())
def test_estimate_key_picks_the_best_correlation_of_an_independent_loop(piece, weighted):
    assume(len(set(histogram(piece, weighted=weighted))) > 1)  # else correlation is undefined
    correlations = reference_key_correlations(piece, weighted=weighted)
    tonic, mode = music.estimate_key(piece, weighted=weighted)
    assert correlations[12 * (mode == "minor") + tonic] == pytest.approx(
        max(correlations), abs=1e-9
    )


@given(piece=pieces(), shift=st.integers(-24, 24))
def test_estimate_key_transposes_with_the_piece(piece, shift):
    assume(len(set(histogram(piece))) > 1)
    best, second = sorted(reference_key_correlations(piece), reverse=True)[:2]
    assume(best - second > 1e-9)  # a tie is broken by key order, which does not transpose
    tonic, mode = music.estimate_key(piece)
    assert music.estimate_key(transpose(piece, shift)) == ((tonic + shift) % 12, mode)
    assert music.out_of_key_ratio(transpose(piece, shift)) == music.out_of_key_ratio(piece)


def test_estimate_key_refuses_an_empty_piece():
    with pytest.raises(ValueError, match="piece must hold at least one note"):
        music.estimate_key([])


# ---------------------------------------------------------------------------- per-piece metrics
def test_out_of_key_counts_notes_outside_the_natural_scale():
    # C major with long C, E, G, plus one short F#: 1 of 9 notes is out of key.
    piece = melody([60, 62, 64, 65, 67, 69, 71, 72, 66], [2, 1, 2, 1, 2, 1, 1, 2, 0.5])
    assert music.estimate_key(piece) == (0, "major")
    assert music.out_of_key_ratio(piece) == 1 / 9
    # Counted, not duration-weighted: a long F# is still one note of 9.
    long_f_sharp = piece[:-1] + [N(66, 1, 12.0, 1.5, bar=3)]
    assert music.estimate_key(long_f_sharp) == (0, "major")
    assert music.out_of_key_ratio(long_f_sharp) == 1 / 9
    # A natural minor: G# (the harmonic minor's leading note) is out of the natural scale.
    a_minor = melody([69, 72, 76, 69, 74, 77, 68, 69], [2, 1, 1, 2, 1, 1, 1, 4])
    assert music.estimate_key(a_minor) == (9, "minor")
    assert music.out_of_key_ratio(a_minor) == 1 / 8


def test_interval_entropy_by_hand():
    up_up_down = melody([60, 62, 64, 62])  # intervals +2, +2, -2
    assert music.interval_entropy(up_up_down) == pytest.approx(math.log2(3) - 2 / 3)
    pooled = up_up_down + melody([48, 48], voice=2)  # +2, +2, -2 and 0: 1/2, 1/4, 1/4
    assert music.interval_entropy(pooled) == pytest.approx(1.5)
    leaps = melody([60, 80, 60])  # +20, -20 clip to +12, -12
    assert music.interval_entropy(leaps) == pytest.approx(1.0)
    assert music.interval_entropy(leaps, clip=0) == 0.0
    assert music.interval_entropy(melody([60, 80, 62]), clip=12) == 1.0  # +12 (clipped), -12
    with pytest.raises(ValueError, match="clip must be an int >= 0"):
        music.interval_entropy(leaps, clip=-1)


def test_duration_entropy_by_hand():
    assert music.duration_entropy(melody([60, 62, 64, 65], [1, 1, 2, 2])) == pytest.approx(1.0)
    # A triplet written as 1/3 and as 1 - 2/3 is one duration.
    assert music.duration_entropy(melody([60, 62], [1 / 3, 1 - 2 / 3])) == 0.0
    assert music.duration_entropy(melody([60, 62, 64], [1, 2, 4])) == pytest.approx(math.log2(3))


def test_pitch_range_and_notes_per_bar_by_hand():
    piece = [N(60, 1, 8.0, 1.0, bar=2), N(43, 2, 12.0, 1.0, bar=3), N(79, 1, 16.0, 1.0, bar=4)]
    piece += [N(62, 1, 9.0, 1.0, bar=2), N(64, 1, 10.0, 1.0, bar=2), N(65, 1, 11.0, 1.0, bar=2)]
    assert music.pitch_range(piece) == 79 - 43
    assert music.notes_per_bar(piece) == 6 / 3  # bars 2..4


@pytest.mark.parametrize(
    "piece, expected",
    [
        # 0-1: voices 1, 2 sound; 1-2: 1, 2, 3; 2-4: only 1 -> (2 + 3 + 2) / 4
        ([N(60, 1, 0.0, 4.0), N(64, 2, 0.0, 2.0), N(67, 3, 1.0, 1.0)], 1.75),
        ([N(60, 1, 0.0, 1.0), N(62, 1, 2.0, 1.0)], 1.0),  # the silence 1-2 is left out
        # Overlapping notes in voice 1 count once: 2 voices throughout.
        ([N(60, 1, 0.0, 2.0), N(64, 1, 1.0, 2.0), N(48, 2, 0.0, 3.0)], 2.0),
        ([N(60, 1, 0.0, 1.0), N(64, 2, 0.5, 1.0), N(67, 3, 1.0, 0.5)], (1 * 0.5 + 2 * 1) / 1.5),
    ],
)
def test_polyphony_by_hand(piece, expected):
    assert music.polyphony(piece) == pytest.approx(expected)


def test_repetition_by_hand():
    # tokens (2,1) (2,1) (-4,1) (2,1) (2,1) (-4,1)
    piece = melody([60, 62, 64, 60, 62, 64, 60])
    assert music.repetition(piece, n=2) == pytest.approx(1 - 3 / 5)  # 3 distinct of 5 bigrams
    assert music.repetition(piece, n=3) == pytest.approx(1 - 3 / 4)
    assert music.repetition(piece, n=4) == 0.0  # 3 distinct of 3
    assert music.repetition(piece, n=6) == 0.0  # one 6-gram
    assert music.repetition(piece, n=7) == 0.0  # none
    # A changed duration breaks the repeat; a transposed repeat in another voice counts.
    changed = melody([60, 62, 64, 60, 62, 64, 60], [1, 1, 1, 1, 1, 2, 1])
    assert music.repetition(changed, n=3) == 0.0
    canon = melody([60, 62, 64, 60]) + melody([55, 57, 59, 55], voice=2)
    assert music.repetition(canon, n=3) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        music.repetition(piece, n=0)


@pytest.mark.parametrize(
    "piece, expected",
    [
        ([], dict.fromkeys(METRIC_NAMES, 0.0)),
        (
            [N(67, 2, 3.0, 1.5, bar=1)],
            {**dict.fromkeys(METRIC_NAMES, 0.0), "notes_per_bar": 1.0, "polyphony": 1.0},
        ),
    ],
)
def test_empty_and_one_note_pieces_have_defined_metrics(piece, expected):
    metrics = music.piece_metrics(piece)
    assert metrics == expected
    assert tuple(metrics) == METRIC_NAMES


@given(piece=pieces(), seed=st.integers(0, 2**16))
def test_metrics_do_not_depend_on_event_order(piece, seed):
    shuffled = list(piece)
    random.Random(seed).shuffle(shuffled)
    assert music.piece_metrics(shuffled) == music.piece_metrics(piece)


@given(piece=pieces(), shift=st.integers(-24, 24))
def test_metrics_other_than_out_of_key_are_transposition_invariant(piece, shift):
    before, after = music.piece_metrics(piece), music.piece_metrics(transpose(piece, shift))
    del before["out_of_key"], after["out_of_key"]
    assert after == before


@given(piece=pieces(), clip=st.integers(0, 24))
def test_metrics_stay_in_their_ranges(piece, clip):
    metrics = music.piece_metrics(piece)
    assert 0.0 <= metrics["out_of_key"] <= 1.0
    assert 0.0 <= music.interval_entropy(piece, clip=clip) <= math.log2(2 * clip + 1) + 1e-12
    distinct = len({round(n.duration, 6) for n in piece})
    assert 0.0 <= metrics["duration_entropy"] <= math.log2(max(distinct, 1)) + 1e-12
    assert 0.0 <= metrics["repetition"] < 1.0
    if piece:
        assert 1.0 - 1e-12 <= metrics["polyphony"] <= len({n.voice for n in piece}) + 1e-12
        assert 0.0 < metrics["notes_per_bar"] <= len(piece)  # bars spanned may hold no note


# ---------------------------------------------------------------------------- corpus level
def flat_profile(values):
    return MusicProfile(dict.fromkeys(METRIC_NAMES, values), {})


def test_profile_bins_span_the_reference_percentiles_with_a_margin():
    profile = flat_profile([0.0, 0.0, 1.0, 1.0])  # 1st and 99th percentiles: 0 and 1
    assert profile.edges("polyphony", bins=4) == pytest.approx([-0.1, 0.2, 0.5, 0.8, 1.1])
    # Reference [2, 0, 0, 2] / 4; values [1, 0, 1, 1] / 3 (5.0 counts in the last bin).
    assert profile.overlap("polyphony", [0.0, 0.6, 5.0], bins=4) == pytest.approx(2 / 3)
    assert profile.overlap("polyphony", [], bins=4) == 0.0
    wide = flat_profile([float(v) for v in range(101)])  # percentiles 1 and 99
    assert wide.edges("repetition", bins=2) == pytest.approx([1 - 9.8, 50.0, 99 + 9.8])
    constant = flat_profile([3.0] * 5)
    assert constant.edges("pitch_range", bins=2) == pytest.approx([2.5, 3.0, 3.5])


def test_overall_score_by_hand():
    profile = flat_profile([0.0, 0.0, 1.0, 1.0])
    assert music.overall_score([[]], profile, bins=4) == 50.0  # every metric 0: half the mass
    one_note = [N(60, 1, 0.0, 1.0)]  # notes_per_bar and polyphony 1, the rest 0
    assert music.overall_score([[], one_note], profile, bins=4) == pytest.approx(100 * 4.5 / 7)
    assert music.overall_score([], profile) == 0.0


def test_overall_score_is_not_symmetric_and_accepts_pieces_or_a_profile():
    eight_bars = [chorale_like(seed) for seed in range(6)]
    two_bars = [chorale_like(seed, bars=2) for seed in range(6, 12)]
    forward = music.overall_score(two_bars, eight_bars)
    assert forward == music.overall_score(two_bars, MusicProfile.from_pieces(eight_bars))
    assert forward != music.overall_score(eight_bars, two_bars)


@given(reference=st.lists(pieces(), min_size=1, max_size=5), bins=st.integers(1, 30))
def test_a_corpus_scores_exactly_100_against_itself(reference, bins):
    assert music.overall_score(reference, reference, bins=bins) == 100.0


@given(
    generated=st.lists(pieces(), max_size=5),
    reference=st.lists(pieces(), min_size=1, max_size=5),
    bins=st.integers(1, 30),
)
def test_overall_score_lies_in_0_100(generated, reference, bins):
    assert 0.0 <= music.overall_score(generated, reference, bins=bins) <= 100.0


def test_corpus_level_errors_name_their_parameter():
    with pytest.raises(TypeError, match="got one piece; wrap it in a list"):
        music.overall_score([N(60, 1, 0.0, 1.0)], [[N(60, 1, 0.0, 1.0)]])
    with pytest.raises(ValueError, match="reference must hold at least one piece"):
        music.overall_score([[N(60, 1, 0.0, 1.0)]], [])
    with pytest.raises(ValueError, match="bins must be an int >= 1"):
        music.overall_score([], flat_profile([1.0]), bins=0)
    with pytest.raises(ValueError, match="values must have exactly the keys"):
        MusicProfile({"polyphony": [1.0]}, {})
    with pytest.raises(ValueError, match=r"values\['repetition'\] must be a non-empty"):
        MusicProfile({**dict.fromkeys(METRIC_NAMES, [1.0]), "repetition": []}, {})


def test_interval_bigram_overlap_by_hand():
    generated = [melody([60, 62, 64, 65])]  # (2, 2), (2, 1)
    reference = [melody([60, 62, 64, 62])]  # (2, 2), (2, -2)
    assert music.interval_bigram_overlap(generated, reference) == 0.5
    leaps = [melody([40, 60, 80, 60])]  # +20 +20 -20 clip to (12, 12), (12, -12)
    assert music.interval_bigram_overlap(leaps, [melody([50, 62, 74, 62])]) == 1.0
    assert music.interval_bigram_overlap([melody([60, 62])], reference) == 0.0  # no pair
    assert music.interval_bigram_overlap([], reference) == 0.0


@given(a=st.lists(pieces(), max_size=4), b=st.lists(pieces(), min_size=1, max_size=4))
def test_interval_bigram_overlap_laws(a, b):
    overlap = music.interval_bigram_overlap(a, b)
    assert 0.0 <= overlap <= 1.0
    assert overlap == music.interval_bigram_overlap(b, a) if a else overlap == 0.0
    has_pairs = MusicProfile.from_pieces(b).bigrams
    assert music.interval_bigram_overlap(b, b) == (1.0 if has_pairs else 0.0)


def test_shuffling_pitches_keeps_piece_histograms_but_lowers_the_bigram_overlap():
    reference = [chorale_like(seed) for seed in range(10)]
    held_out = [chorale_like(seed) for seed in range(10, 20)]
    shuffled = [shuffle_pitches(piece, seed) for seed, piece in enumerate(held_out)]
    for piece, scrambled in zip(held_out, shuffled, strict=True):
        for voice in (1, 2, 3, 4):
            notes = [n for n in piece if n.voice == voice]
            moved = [n for n in scrambled if n.voice == voice]
            assert sorted(n.pitch for n in moved) == sorted(n.pitch for n in notes)
            assert [n.duration for n in moved] == [n.duration for n in notes]
        assert music.pitch_range(scrambled) == music.pitch_range(piece)
        assert music.duration_entropy(scrambled) == music.duration_entropy(piece)
        assert music.polyphony(scrambled) == music.polyphony(piece)
    kept = music.interval_bigram_overlap(held_out, reference)
    lost = music.interval_bigram_overlap(shuffled, reference)
    assert kept > 0.8 and lost < kept - 0.3


def test_corpus_summary_by_hand():
    corpus = [melody([60, 60 + rise]) for rise in range(21)]  # pitch ranges 0..20, 2 notes each
    summary = music.corpus_summary(corpus)
    assert summary["pieces"] == 21.0
    assert (summary["pitch_range_mean"], summary["pitch_range_p5"]) == (10.0, 1.0)
    assert summary["pitch_range_p95"] == pytest.approx(19.0)
    assert (summary["notes_mean"], summary["notes_p5"], summary["notes_p95"]) == (2.0, 2.0, 2.0)
    assert summary["polyphony_mean"] == 1.0
    assert set(summary) == {"pieces"} | {
        f"{name}_{stat}" for name in (*METRIC_NAMES, "notes") for stat in ("mean", "p5", "p95")
    }
    with pytest.raises(ValueError, match="pieces must hold at least one piece"):
        music.corpus_summary([])


# ---------------------------------------------------------------------------- early stopping
REFERENCE = [chorale_like(seed) for seed in range(8)]
PROFILE = MusicProfile.from_pieces(REFERENCE)


class Samples:
    """A fake sample_fn that returns the next of a list of sample sets and counts its calls."""

    def __init__(self, *sets):
        self.sets, self.calls = list(sets), 0

    def __call__(self):
        self.calls += 1
        return self.sets[(self.calls - 1) % len(self.sets)]


def test_update_adds_the_music_metrics_in_place():
    stopper = MusicalEarlyStopping(Samples(REFERENCE[:4] + [[]]), PROFILE, patience=2)
    metrics = {"val_loss": 2.0}
    assert stopper.update(metrics, step=10) is False
    expected_score = music.overall_score(REFERENCE[:4], PROFILE) / 100 * 4 / 5
    assert metrics["music_score"] == pytest.approx(expected_score)
    assert metrics["music_samples"] == 4
    # The first loss is the baseline (loss component 0), so the combined score is 0.7 x music.
    assert metrics["music_combined"] == pytest.approx(0.7 * expected_score)
    assert stopper.best == pytest.approx(metrics["music_combined"])
    assert metrics["music_bigram_overlap"] == music.interval_bigram_overlap(REFERENCE[:4], PROFILE)
    rows = [music.piece_metrics(piece) for piece in REFERENCE[:4]]
    for name in METRIC_NAMES:
        assert metrics[f"music_{name}"] == pytest.approx(statistics.mean(r[name] for r in rows))
    assert stopper.best == pytest.approx(0.7 * expected_score)  # loss component 0 at baseline
    assert stopper.monitor.baseline_loss == 2.0


def test_the_whole_reference_scores_1_and_no_decodable_sample_scores_0():
    stopper = MusicalEarlyStopping(Samples(REFERENCE, [], [[], []]), REFERENCE)
    assert stopper.music_metrics()["music_score"] == 1.0
    for _ in range(2):
        metrics = stopper.music_metrics()
        assert (metrics["music_score"], metrics["music_samples"]) == (0.0, 0)
        assert math.isnan(metrics["music_polyphony"])


def test_stops_after_patience_evaluations_without_improvement():
    samples = Samples(REFERENCE, REFERENCE[:2], [[]], REFERENCE[:3])
    stopper = MusicalEarlyStopping(samples, PROFILE, patience=3, baseline_loss=4.0)
    flags = [stopper.update({"val_loss": 3.0}, step=100 * i) for i in range(4)]
    assert flags == [False, False, False, True]
    assert stopper.best == pytest.approx(0.3 * 0.25 + 0.7 * 1.0)
    assert (stopper.best_step, stopper.counter) == (0, 3)


def test_existing_music_score_is_not_resampled_and_read_only_metrics_work():
    samples = Samples(REFERENCE)
    stopper = MusicalEarlyStopping(samples, PROFILE, patience=1)
    stopper.update({"val_loss": 2.0, "music_score": 0.5})
    assert samples.calls == 0 and stopper.best == pytest.approx(0.35)
    stopper.update(MappingProxyType({"val_loss": 2.0}))
    assert samples.calls == 1 and stopper.best == pytest.approx(0.7)
    metrics = {"val_loss": 2.0}
    assert stopper.on_evaluate(None, metrics) is None  # a callback that never asks to stop
    assert samples.calls == 2 and metrics["music_score"] == 1.0


def test_state_round_trips_and_the_resumed_stopper_decides_the_same():
    sets = (REFERENCE[:3], REFERENCE[3:5], [[]], REFERENCE[:1], REFERENCE)
    losses = (3.0, 2.5, 2.6, 2.4, 2.7, 2.2)
    original = MusicalEarlyStopping(Samples(*sets), PROFILE, patience=4)
    for i, loss in enumerate(losses[:3]):
        original.update({"val_loss": loss}, step=i)
    state = original.state_dict()
    assert state["monitor"] == {"baseline_loss": 3.0}
    resumed = MusicalEarlyStopping(Samples(*sets), PROFILE, patience=4)
    resumed.load_state_dict(state)
    resumed.sample_fn.calls = original.sample_fn.calls
    for i, loss in enumerate(losses[3:], start=3):
        assert resumed.update({"val_loss": loss}, step=i) == original.update(
            {"val_loss": loss}, step=i
        )
    assert resumed.state_dict() == original.state_dict()


def test_constructor_errors_name_the_parameter():
    with pytest.raises(TypeError, match="sample_fn must be callable"):
        MusicalEarlyStopping(None, PROFILE)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="patience must be an int >= 1"):
        MusicalEarlyStopping(Samples([]), PROFILE, patience=0)
    with pytest.raises(ValueError, match=r"weights\['music_score'\] must be a finite number"):
        MusicalEarlyStopping(Samples([]), PROFILE, musical_weight=-1.0)


def test_trainer_logs_music_score_with_musical_early_stopping(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=24, block_size=16, n_layer=2, n_head=2, d_model=32))
    steps = torch.randint(1, 4, (2000,), generator=torch.Generator().manual_seed(0))
    tokens = 4 + torch.cumsum(steps, 0) % 20

    def sample_fn():  # decode each id as a pitch of a one-voice melody
        ids = generate(model, torch.tensor([[4]]), 16, generator=torch.Generator().manual_seed(1))
        return [[N(48 + i, 1, 0.5 * t, 0.5, bar=t // 8) for t, i in enumerate(ids[0].tolist())]]

    calls = []

    def counted():
        calls.append(trainer.step)
        return sample_fn()

    stopper = MusicalEarlyStopping(counted, PROFILE, patience=5)
    config = TrainerConfig(max_steps=6, batch_size=4, eval_every=3, eval_batches=1, warmup_steps=1)
    trainer = Trainer(
        model,
        config,
        TokenDataset(tokens[:1600], 16),
        TokenDataset(tokens[1600:], 16),
        loggers=[JSONLLogger(tmp_path / "metrics.jsonl")],
        early_stopping=stopper,
        callbacks=[stopper],  # as a callback too: still one sample per evaluation
    )
    final = trainer.fit()
    evaluations = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "val_loss" in r]
    assert [r["step"] for r in evaluations] == [3, 6]
    for record in evaluations:
        assert 0.0 <= record["music_score"] <= 1.0 and record["music_samples"] == 1
        assert record["music_pitch_range"] >= 0.0
    assert final["music_score"] == evaluations[-1]["music_score"]
    assert calls == [3, 6] and stopper.num_evaluations == 2


# ---------------------------------------------------------------------------- documentation
@pytest.mark.parametrize("module", [metrics, music, _pieces, _corpus, _stopping])
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_docs_example_runs_and_prints_what_its_comments_say(capsys):
    page = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
    code = re.search(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)
    assert code is not None
    exec(compile(code.group(1), str(page), "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert "'out_of_key': 0.25, 'interval_entropy': 3.67" in lines[0]
    assert [round(float(line), 3) for line in lines[1:]] == [19.048, 0.028, 100.0, 7.389]

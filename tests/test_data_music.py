"""Tests for transformer_kit.data.music: Bach chorales, MIDI/MusicXML files, leak-free splits."""

from __future__ import annotations

import json
import logging
import re
import shutil
import struct
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from fractions import Fraction
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_kit.data import (
    bach_chorales,
    bach_chorales_report,
    melody_groups,
    read_midi,
    read_music_folder,
    split_pieces,
    write_midi,
    write_musicxml,
)
from transformer_kit.tokenization.events import NoteEvent, sort_events

INSTALL_HINT = r'pip install "transformer-kit\[music\]"'
CACHE_FILE = "bach_chorales-v3.json"


def _tune(pitches, *, voice=1):
    """One voice of quarter notes."""
    return [NoteEvent(p, voice, float(i), 1.0) for i, p in enumerate(pitches)]


def _transposed(piece, shift):
    return [NoteEvent(e.pitch + shift, e.voice, e.onset, e.duration, e.bar, e.key) for e in piece]


def _ornamented(pitches):
    """The tune with every leap of a third filled by a passing eighth on the off-beat."""
    events = []
    for i, (a, b) in enumerate(pairwise([*pitches, None])):
        if b is not None and abs(b - a) in (3, 4):
            events += [NoteEvent(a, 1, float(i), 0.5), NoteEvent(a + (b - a) // 2, 1, i + 0.5, 0.5)]
        else:
            events.append(NoteEvent(a, 1, float(i), 1.0))
    return events


def _intervals(piece):
    """Reference soprano melody: top pitch per onset of voice 1, repeats merged, as intervals."""
    top: dict[float, int] = {}
    for e in piece:
        if e.voice == 1:
            top[e.onset] = max(top.get(e.onset, 0), e.pitch)
    pitches = [p for _, p in sorted(top.items())]
    merged = [p for i, p in enumerate(pitches) if i == 0 or p != pitches[i - 1]]
    return tuple(b - a for a, b in pairwise(merged))


TUNE = [67, 64, 65, 67, 69, 67, 65, 64, 62, 60, 64, 67, 72, 71, 69, 67]
OTHER = [60, 62, 64, 65, 67, 65, 64, 62, 60, 59, 57, 59, 60, 64, 62, 60]


# --- melody_groups ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant, same",
    [
        (_transposed(_tune(TUNE), -5), True),
        (_tune(TUNE) + _tune([48] * 16, voice=2), True),  # other voices do not matter
        (_ornamented(TUNE), True),  # passing eighths: equal beat melodies
        (_tune(TUNE[:8] + TUNE), True),  # first half repeated, written out
        (_tune(TUNE[:6] + OTHER[6:]), False),
        (_tune(OTHER), False),
    ],
    ids=["transposed", "with-alto", "ornamented", "repeat-written-out", "half-shared", "other"],
)
def test_melody_groups_links_harmonisations_of_one_tune(variant, same):
    groups = melody_groups([_tune(TUNE), variant])
    assert groups == ([[0, 1]] if same else [[0], [1]])


def test_melody_groups_takes_the_top_note_of_the_first_voice_and_links_transitively():
    chorded = _tune(TUNE) + [NoteEvent(p - 12, 1, float(i), 1.0) for i, p in enumerate(TUNE)]
    third_voice_only = [NoteEvent(e.pitch, 3, e.onset, e.duration) for e in _tune(TUNE)]
    ornamented_up = _transposed(_ornamented(TUNE), 2)
    pieces = [_tune(OTHER), chorded, third_voice_only, ornamented_up, _tune([60, 62, 64])]
    assert melody_groups(pieces) == [[0], [1, 2, 3], [4]]


def test_melody_groups_compares_short_melodies_exactly():
    pieces = [_tune([60, 62, 64]), _tune([65, 67, 69]), _tune([60, 62, 63]), []]
    assert melody_groups(pieces) == [[0, 1], [2], [3]]


_melodies = st.lists(st.integers(48, 84), min_size=2, max_size=20)


@given(melodies=st.lists(_melodies, min_size=1, max_size=8), shift=st.integers(-12, 12))
def test_melody_groups_ignore_transposition_and_input_order(melodies, shift):
    pieces = [_tune(m) for m in melodies]
    groups = melody_groups(pieces)
    assert sorted(i for g in groups for i in g) == list(range(len(pieces)))
    assert melody_groups([_transposed(pieces[0], shift), *pieces[1:]]) == groups
    reversed_groups = melody_groups(pieces[::-1])
    n = len(pieces)
    assert sorted(sorted(n - 1 - i for i in g) for g in reversed_groups) == sorted(groups)


# --- split_pieces ----------------------------------------------------------------------------


@st.composite
def _related_pieces(draw):
    """Tunes, each with 0-2 transposed or exact copies, in a random order."""
    pieces = []
    for melody in draw(st.lists(_melodies, min_size=1, max_size=12)):
        for shift in [0, *draw(st.lists(st.integers(-5, 5), max_size=2))]:
            pieces.append(_transposed(_tune(melody), shift))
    return draw(st.permutations(pieces))


_fractions = st.tuples(st.integers(0, 10), st.integers(0, 10), st.integers(0, 10)).filter(any)


@given(pieces=_related_pieces(), weights=_fractions, seed=st.integers(0, 3))
def test_split_is_a_partition_that_keeps_every_melody_in_one_split(pieces, weights, seed):
    fractions = tuple(w / sum(weights) for w in weights)
    splits = split_pieces(pieces, fractions=fractions, seed=seed)
    assert list(splits) == ["train", "val", "test"]
    where = {id(p): name for name, members in splits.items() for p in members}
    assert sum(map(len, splits.values())) == len(pieces) == len(where)
    melody_splits: dict[tuple[int, ...], set[str]] = {}
    for piece in pieces:
        melody_splits.setdefault(_intervals(piece), set()).add(where[id(piece)])
    assert all(len(names) == 1 for names in melody_splits.values())
    largest = max(map(len, melody_groups(pieces)))
    for name, fraction in zip(splits, fractions, strict=True):
        # Exact (to rounding) when every group is one piece; one overflowing group at most
        # per split otherwise, so a split misses its target by less than two groups.
        bound = 1 if largest == 1 else 2 * largest + 1
        assert abs(len(splits[name]) - fraction * len(pieces)) < bound
        if fraction == 0:
            assert splits[name] == []


@given(pieces=_related_pieces(), seed=st.integers(0, 3))
def test_split_does_not_depend_on_input_order(pieces, seed):
    def contents(splits):
        return {name: Counter(map(tuple, members)) for name, members in splits.items()}

    forward = split_pieces(pieces, seed=seed, fractions=(0.6, 0.2, 0.2))
    backward = split_pieces(pieces[::-1], seed=seed, fractions=(0.6, 0.2, 0.2))
    assert contents(forward) == contents(backward)


def test_split_keeps_input_order_within_each_split_and_the_seed_changes_it():
    pieces = [_tune([60, 61 + i]) for i in range(40)]  # 40 different melodies
    first = split_pieces(pieces, seed=0)
    assert [len(first[s]) for s in ("train", "val", "test")] == [36, 2, 2]
    for members in first.values():
        positions = [pieces.index(p) for p in members]
        assert positions == sorted(positions)
    assert split_pieces(pieces, seed=0) == first
    assert split_pieces(pieces, seed=1) != first


def test_group_key_replaces_melody_grouping():
    pieces = [_tune(OTHER)] * 3 + [_transposed(_tune(TUNE), shift) for shift in range(-3, 4)]
    labels = ["a", "a", "a", "b", "c", "d", "e", "f", "g", "h"]  # OTHER thrice, 7 TUNEs
    splits = split_pieces(
        pieces, fractions=(0.5, 0.5, 0.0), group_key=lambda p: labels[pieces.index(p)]
    )
    tunes = pieces[3:]
    assert all(any(p in tunes for p in splits[s]) for s in ("train", "val"))  # TUNE is split
    assert len({name for name, members in splits.items() if _tune(OTHER) in members}) == 1
    by_melody = split_pieces(pieces, fractions=(0.5, 0.5, 0.0))  # the default: two groups
    assert sorted(len(members) for members in by_melody.values()) == [0, 3, 7]


def test_exact_duplicates_share_a_split_whatever_the_group_key_says():
    pieces = [_tune(TUNE), _tune(TUNE)]  # alone, two groups of one would straddle 50/50
    labels = iter(["first", "second"])
    splits = split_pieces(pieces, fractions=(0.5, 0.5, 0.0), group_key=lambda p: next(labels))
    assert sorted(map(len, splits.values())) == [0, 0, 2]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"fractions": (0.9, 0.1)}, r"fractions must be 3 numbers >= 0 .* got \(0.9, 0.1\)"),
        ({"fractions": (0.9, 0.2, -0.1)}, r"fractions must be .* got \(0.9, 0.2, -0.1\)"),
        ({"fractions": (0.5, 0.2, 0.2)}, r"fractions must be .* sum to 1, got \(0.5, 0.2, 0.2\)"),
        ({"fractions": (1.0, float("nan"), 0.0)}, r"fractions must be .* got \(1.0, nan, 0.0\)"),
        ({"seed": 1.5}, r"seed must be an int, got 1.5"),
        ({"group_key": "voice"}, r"group_key must be a function piece -> hashable .* got 'voice'"),
        ({"group_key": lambda p: [p[0].pitch]}, r"group_key must return a hashable value, got \["),
    ],
)
def test_split_errors_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        split_pieces([_tune(TUNE), _tune(OTHER)], **kwargs)


@pytest.mark.parametrize(
    "pieces, match",
    [
        ("abc", r"pieces must be a list of pieces .* got str"),
        ([_tune(TUNE), None], r"pieces\[1\] must be a list of NoteEvent, got NoneType"),
        ([[(60, 1, 0.0, 1.0)]], r"pieces\[0\] must hold only NoteEvent, got a tuple"),
    ],
)
def test_split_and_melody_groups_refuse_malformed_pieces(pieces, match):
    with pytest.raises(ValueError, match=match):
        split_pieces(pieces)
    with pytest.raises(ValueError, match=match):
        melody_groups(pieces)


# --- without music21 -------------------------------------------------------------------------


def test_importing_data_does_not_import_music21():
    code = "import sys, transformer_kit.data; print('music21' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_music21_gives_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "music21", None)  # makes `import music21` fail
    midi = tmp_path / "a.mid"
    midi.write_bytes(b"MThd")
    with pytest.raises(ImportError, match=f"read_midi needs music21 .*{INSTALL_HINT}"):
        read_midi(midi)
    with pytest.raises(ImportError, match=INSTALL_HINT):
        write_midi(_tune(TUNE), tmp_path / "b.mid")
    with pytest.raises(ImportError, match=INSTALL_HINT):
        write_musicxml(_tune(TUNE), tmp_path / "b.musicxml")
    with pytest.raises(ImportError, match=INSTALL_HINT):
        read_music_folder(tmp_path)
    with pytest.raises(ImportError, match=f"bach_chorales needs music21 .*{INSTALL_HINT}"):
        bach_chorales(tmp_path / "empty cache")


# --- MusicXML and score reading --------------------------------------------------------------


def _measure(m21, number, *items, key=None, meter=None):
    measure = m21.stream.Measure(number=number)
    if meter is not None:
        measure.append(m21.meter.TimeSignature(meter))
    if key is not None:
        measure.append(m21.key.KeySignature(key))
    for item in items:
        measure.append(item)
    return measure


def _note(m21, name, quarter_length=1.0, tie=None):
    note = m21.note.Note(name, quarterLength=quarter_length)
    if tie is not None:
        note.tie = m21.tie.Tie(tie)
    return note


def _held(m21, element):
    element.expressions.append(m21.expressions.Fermata())
    return element


def _chorale(m21):
    """3/4, D major then F major: a pickup bar, a tie over a barline, a grace note, a triplet
    and a chord in the alto; fermatas on the alto's chord, the tie's second half and the last
    soprano and bass notes."""
    n = _note
    third = Fraction(1, 3)
    voices = [
        [
            _measure(m21, 0, n(m21, "D5"), key=2, meter="3/4"),
            _measure(m21, 1, n(m21, "E5"), n(m21, "F#5", 2, "start")),
            _measure(
                m21,
                2,
                _held(m21, n(m21, "F#5", 1, "stop")),  # a fermata on a tie's later half
                m21.note.Note("C#5").getGrace(),
                *(n(m21, p, third) for p in ("A5", "B5", "C#6")),
                _held(m21, n(m21, "A5")),
                key=-1,
            ),
        ],
        [
            _measure(m21, 0, n(m21, "A4"), key=2, meter="3/4"),
            _measure(
                m21, 1, _held(m21, m21.chord.Chord(["A4", "C#5"], quarterLength=2)), n(m21, "B4")
            ),
            _measure(m21, 2, n(m21, "A4", 3), key=-1),
        ],
        [
            _measure(m21, 0, n(m21, "F#4"), key=2, meter="3/4"),
            _measure(m21, 1, n(m21, "E4", 3)),
            _measure(m21, 2, n(m21, "D4", 3), key=-1),
        ],
        [
            _measure(m21, 0, n(m21, "D3"), key=2, meter="3/4"),
            _measure(m21, 1, n(m21, "C#3", 3)),
            _measure(m21, 2, _held(m21, n(m21, "D3", 3)), key=-1),
        ],
    ]
    score = m21.stream.Score()
    for name, measures in zip(["Soprano", "Alto", "Tenor", "Bass"], voices, strict=True):
        measures[0].padAsAnacrusis()  # how music21 marks a pickup bar
        part = m21.stream.Part(measures)
        part.partName = name
        score.insert(0, part)
    return score


CHORALE_EVENTS = sort_events(
    [
        NoteEvent(74, 1, 0.0, 1.0, 0, 2),
        NoteEvent(76, 1, 1.0, 1.0, 1, 2),
        NoteEvent(78, 1, 2.0, 3.0, 1, 2, True),  # tied into bar 2: one event, with the bar and
        # key of its start and the fermata of its second half
        NoteEvent(81, 1, 5.0, 1 / 3, 2, -1),  # the grace note before it is dropped
        NoteEvent(83, 1, float(Fraction(16, 3)), 1 / 3, 2, -1),
        NoteEvent(85, 1, float(Fraction(17, 3)), 1 / 3, 2, -1),
        NoteEvent(81, 1, 6.0, 1.0, 2, -1, fermata=True),
        NoteEvent(69, 2, 0.0, 1.0, 0, 2),
        NoteEvent(69, 2, 1.0, 2.0, 1, 2, True),  # the chord: one event per pitch, both held
        NoteEvent(73, 2, 1.0, 2.0, 1, 2, True),
        NoteEvent(71, 2, 3.0, 1.0, 1, 2),
        NoteEvent(69, 2, 4.0, 3.0, 2, -1),
        NoteEvent(66, 3, 0.0, 1.0, 0, 2),
        NoteEvent(64, 3, 1.0, 3.0, 1, 2),
        NoteEvent(62, 3, 4.0, 3.0, 2, -1),
        NoteEvent(50, 4, 0.0, 1.0, 0, 2),
        NoteEvent(49, 4, 1.0, 3.0, 1, 2),
        NoteEvent(50, 4, 4.0, 3.0, 2, -1, fermata=True),
    ]
)


def test_musicxml_reading_merges_ties_drops_grace_notes_and_splits_chords(tmp_path):
    m21 = pytest.importorskip("music21")
    _chorale(m21).write("musicxml", fp=tmp_path / "chorale.musicxml")
    assert read_music_folder(tmp_path, pattern="*.musicxml") == [CHORALE_EVENTS]


def test_bars_count_from_the_first_measure_and_key_defaults_to_c(tmp_path):
    m21 = pytest.importorskip("music21")
    part = m21.stream.Part(
        [
            _measure(m21, 1, _note(m21, "C4", 4), meter="4/4"),
            _measure(m21, 2, _note(m21, "G4", 2), m21.note.Rest(quarterLength=2)),
        ]
    )
    m21.stream.Score([part]).write("musicxml", fp=tmp_path / "plain.musicxml")
    assert read_music_folder(tmp_path, pattern="*.musicxml") == [
        [NoteEvent(60, 1, 0.0, 4.0, 0, 0), NoteEvent(67, 1, 4.0, 2.0, 1, 0)]
    ]


@pytest.mark.parametrize("suffix", [".musicxml", ".mxl"])
def test_write_musicxml_is_read_back_by_music21_with_the_same_notes(tmp_path, suffix):
    m21 = pytest.importorskip("music21")
    path = tmp_path / f"sample{suffix}"
    write_musicxml(CHORALE_EVENTS, path)
    assert path.read_bytes()[:2] == (b"PK" if suffix == ".mxl" else b"<?")
    score = m21.converter.parse(path, forceSource=True)
    found, held = [], []
    for voice, part in enumerate(score.parts, start=1):  # music21's own reading, not ours
        for element in part.stripTies().flatten().notes:
            found += [
                (p.midi, voice, element.offset, element.quarterLength) for p in element.pitches
            ]
        for element in part.flatten().notes:  # as written: a tied note is split at the barline
            if any(isinstance(x, m21.expressions.Fermata) for x in element.expressions):
                held += [(p.midi, voice, _exact(element.offset)) for p in element.pitches]
    assert sorted((p, v, _exact(o), _exact(d)) for p, v, o, d in found) == sorted(
        (e.pitch, e.voice, _exact(e.onset), _exact(e.duration)) for e in CHORALE_EVENTS
    )
    # One written fermata per held event, on a note of its pitch and voice within its span.
    expected = [e for e in CHORALE_EVENTS if e.fermata]
    assert len(held) == len(expected) == 5
    for e in expected:
        assert any(
            (p, v) == (e.pitch, e.voice) and e.onset <= o < e.onset + e.duration for p, v, o in held
        )
    assert read_music_folder(tmp_path, pattern=f"*{suffix}") == [CHORALE_EVENTS]


def _exact(value):
    return Fraction(value).limit_denominator(64)


# --- MIDI ------------------------------------------------------------------------------------


def _midi_bytes(tracks, *, midi_format=1, ticks=480):
    """A standard MIDI file built by hand; tracks are lists of (tick, message bytes)."""

    def varlen(value):
        out = [value & 0x7F]
        while value > 0x7F:
            value >>= 7
            out.append(0x80 | (value & 0x7F))
        return bytes(reversed(out))

    chunks = []
    for events in tracks:
        data, last = b"", 0
        for tick, message in sorted(events, key=lambda e: e[0]):
            data += varlen(tick - last) + message
            last = tick
        data += b"\x00\xff\x2f\x00"  # end of track
        chunks.append(b"MTrk" + struct.pack(">I", len(data)) + data)
    header = b"MThd" + struct.pack(">IHHH", 6, midi_format, len(tracks), ticks)
    return header + b"".join(chunks)


def _midi_note(channel, pitch, start, length, ticks=480):
    return [
        (round(start * ticks), bytes([0x90 | channel, pitch, 80])),
        (round((start + length) * ticks), bytes([0x80 | channel, pitch, 0])),
    ]


TEMPO = (0, b"\xff\x51\x03\x07\xa1\x20")  # 500,000 us per quarter: 120 bpm
THREE_FOUR = (0, b"\xff\x58\x04\x03\x02\x18\x08")
E_FLAT_MAJOR = (0, b"\xff\x59\x02\xfd\x00")  # three flats


def test_read_midi_makes_a_voice_per_track_and_counts_4_4_bars_without_a_time_signature(
    tmp_path,
):
    pytest.importorskip("music21")
    tracks = [
        [TEMPO],  # conductor track: no notes, no voice
        _midi_note(0, 72, 0, 4) + _midi_note(0, 74, 4, 1) + _midi_note(0, 76, 9, 1),
        _midi_note(1, 48, 0, 8),
    ]
    (tmp_path / "a.mid").write_bytes(_midi_bytes(tracks))
    assert read_midi(tmp_path / "a.mid") == [
        NoteEvent(72, 1, 0.0, 4.0, 0, 0),
        NoteEvent(48, 2, 0.0, 8.0, 0, 0),
        NoteEvent(74, 1, 4.0, 1.0, 1, 0),
        NoteEvent(76, 1, 9.0, 1.0, 2, 0),
    ]


def test_read_midi_splits_the_channels_of_a_format_0_file_and_skips_drums(tmp_path):
    pytest.importorskip("music21")
    track = [TEMPO, THREE_FOUR, E_FLAT_MAJOR]
    track += _midi_note(0, 72, 0, 1) + _midi_note(0, 74, 3, 1)
    track += _midi_note(9, 36, 0, 0.5)  # channel 10: percussion
    track += _midi_note(3, 48, 0, 2) + _midi_note(3, 52, 0, 2)  # a chord on another channel
    (tmp_path / "a.mid").write_bytes(_midi_bytes([track], midi_format=0))
    assert read_midi(tmp_path / "a.mid") == [
        NoteEvent(72, 1, 0.0, 1.0, 0, -3),
        NoteEvent(48, 2, 0.0, 2.0, 0, -3),
        NoteEvent(52, 2, 0.0, 2.0, 0, -3),
        NoteEvent(74, 1, 3.0, 1.0, 1, -3),  # 3/4: beat 4 starts bar 1
    ]


def _three_four_piece():
    def event(pitch, voice, onset, duration, key=-2):
        return NoteEvent(pitch, voice, float(onset), float(duration), int(onset // 3), key)

    return sort_events(
        [
            event(72, 1, 0, 1.5),
            event(74, 1, 1.5, 0.25),
            event(76, 1, 1.75, 2.25),  # over the barline
            event(77, 1, 4, 2),
            event(79, 1, 6, 0.75, key=1),
            event(81, 1, 6.75, 0.25, key=1),
            event(84, 1, 7, 2, key=1),
            event(60, 2, 0, 3),
            event(64, 2, 0, 3),
            event(62, 2, 3, 1.5),
            event(65, 2, 4.5, 4.5),
            event(41, 3, 0, 9),
        ]
    )


@pytest.mark.parametrize("piece", [_three_four_piece(), CHORALE_EVENTS], ids=["3/4", "pickup"])
def test_write_midi_then_read_midi_gives_the_same_events(tmp_path, piece):
    pytest.importorskip("music21")
    write_midi(piece, tmp_path / "a.mid", tempo_bpm=72)
    assert read_midi(tmp_path / "a.mid") == [replace(e, fermata=False) for e in piece]  # no
    # fermatas in MIDI


@st.composite
def _grid_pieces(draw):
    """Pieces on a 16th-note grid whose first voice starts every bar (so its meter is known)."""
    bar = draw(st.sampled_from([12, 16]))  # in 16ths: 3/4 or 4/4
    n_bars = draw(st.integers(1, 4))
    keys = draw(st.lists(st.integers(-7, 7), min_size=n_bars, max_size=n_bars))
    events = []
    for voice in range(1, draw(st.integers(1, 3)) + 1):
        t = 0
        while t < n_bars * bar:
            if voice > 1:
                t += draw(st.integers(0, 4))  # later voices may rest
            length = draw(st.integers(1, 8))
            if voice == 1:
                length = min(length, bar - t % bar)  # voice 1 restarts on every downbeat
            if t + length > n_bars * bar:
                break
            for pitch in draw(st.sets(st.integers(36, 84), min_size=1, max_size=2)):
                events.append(NoteEvent(pitch, voice, t / 4, length / 4, t // bar, keys[t // bar]))
            t += length
    return sort_events(events)


@settings(max_examples=15)
@given(piece=_grid_pieces())
def test_midi_round_trip_law(tmp_path_factory, piece):
    pytest.importorskip("music21")
    path = tmp_path_factory.mktemp("midi") / "law.mid"
    write_midi(piece, path)
    assert read_midi(path) == piece


def test_read_midi_errors(tmp_path):
    pytest.importorskip("music21")
    with pytest.raises(FileNotFoundError, match="read_midi: no such file: .*missing.mid"):
        read_midi(tmp_path / "missing.mid")
    (tmp_path / "bad.mid").write_bytes(b"not a midi file")
    with pytest.raises(ValueError, match=r"read_midi: cannot parse '.*bad.mid' as MIDI"):
        read_midi(tmp_path / "bad.mid")


@pytest.mark.parametrize(
    "piece, kwargs, error, match",
    [
        ([], {}, ValueError, "piece must hold at least one NoteEvent, got an empty piece"),
        ([(60, 1, 0.0, 1.0)], {}, ValueError, r"piece\[0\] must be a NoteEvent, got tuple"),
        ("C4", {}, ValueError, "piece must be a list of NoteEvent, got str"),
        (None, {}, ValueError, "piece must be a list of NoteEvent, got NoneType"),
        ("tune", {"tempo_bpm": 0}, ValueError, r"tempo_bpm must be a number in \[3.6, 1000\]"),
        ("tune", {"tempo_bpm": True}, ValueError, r"tempo_bpm must be .* got True"),
        ("tune", {"tempo_bpm": float("inf")}, ValueError, r"tempo_bpm must be .* got inf"),
    ],
)
def test_write_midi_errors_name_the_argument(tmp_path, piece, kwargs, error, match):
    piece = _tune(TUNE) if piece == "tune" else piece
    with pytest.raises(error, match=f"write_midi: {match}"):
        write_midi(piece, tmp_path / "a.mid", **kwargs)


def test_file_functions_refuse_what_is_not_a_path(tmp_path):
    with pytest.raises(ValueError, match=r"read_midi: path must be a path .* got 3"):
        read_midi(3)
    with pytest.raises(ValueError, match=r"write_midi: path must be a path .* got None"):
        write_midi(_tune(TUNE), None)
    with pytest.raises(ValueError, match=r"write_musicxml: path must be a path .* got ''"):
        write_musicxml(_tune(TUNE), "")
    with pytest.raises(ValueError, match=r"read_music_folder: folder must be a path .* got \["):
        read_music_folder([tmp_path])


def test_writers_refuse_a_missing_folder(tmp_path):
    for writer, name in [(write_midi, "a.mid"), (write_musicxml, "a.musicxml")]:
        with pytest.raises(FileNotFoundError, match="the folder of path .* does not exist"):
            writer(_tune(TUNE), tmp_path / "no such folder" / name)


# --- read_music_folder -----------------------------------------------------------------------


def test_read_music_folder_reads_midi_and_musicxml_and_reports_what_it_skips(tmp_path, caplog):
    pytest.importorskip("music21")
    write_midi(_tune(TUNE), tmp_path / "1-tune.mid")
    write_musicxml(_tune(OTHER), tmp_path / "2-other.musicxml")
    (tmp_path / "3-broken.midi").write_bytes(b"MThd garbage")
    (tmp_path / "4-silent.mid").write_bytes(_midi_bytes([[TEMPO]]))
    caplog.set_level(logging.INFO, logger="transformer_kit.data.music")
    pieces = read_music_folder(tmp_path, pattern="*")
    assert [[(e.pitch, e.onset) for e in p] for p in pieces] == [
        [(p, float(i)) for i, p in enumerate(melody)] for melody in (TUNE, OTHER)
    ]
    assert "skipping" in caplog.text and "3-broken.midi: read_music_folder: cannot parse" in (
        caplog.text
    )
    assert "4-silent.mid: no pitched notes" in caplog.text
    assert "read 2 of 4 files" in caplog.text
    assert len(read_music_folder(tmp_path)) == 1  # the default pattern "*.mid*" finds MIDI only


def test_a_score_without_barlines_gets_bars_from_its_time_signature(tmp_path):
    pytest.importorskip("music21")
    (tmp_path / "tune.abc").write_text("X:1\nT:no barlines\nM:3/4\nL:1/4\nK:G\nC2 D2 E2 F2 G2\n")
    assert read_music_folder(tmp_path, pattern="*.abc") == [
        [
            NoteEvent(60, 1, 0.0, 2.0, 0, 1),
            NoteEvent(62, 1, 2.0, 2.0, 0, 1),
            NoteEvent(64, 1, 4.0, 2.0, 1, 1),
            NoteEvent(66, 1, 6.0, 2.0, 2, 1),  # F is sharp in G major
            NoteEvent(67, 1, 8.0, 2.0, 2, 1),
        ]
    ]


def test_read_music_folder_errors(tmp_path):
    with pytest.raises(NotADirectoryError, match="folder .*nope.* is not a directory"):
        read_music_folder(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"no file in .* matches pattern '\*.mid\*'"):
        read_music_folder(tmp_path)
    with pytest.raises(ValueError, match="pattern must be a non-empty glob, got ''"):
        read_music_folder(tmp_path, pattern="")


# --- bach_chorales on a tiny stand-in corpus -------------------------------------------------


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    """Files shaped like music21's Bach corpus: a chorale, its duplicate, a trio, a broken
    file and a Roman-numeral analysis."""
    m21 = pytest.importorskip("music21")
    root = tmp_path_factory.mktemp("corpus")
    folder = root / "bach"
    folder.mkdir()
    _chorale(m21).write("musicxml", fp=folder / "a.musicxml")
    shutil.copy(folder / "a.musicxml", folder / "b-copy.musicxml")
    trio = _chorale(m21)
    trio.remove(trio.parts[1])
    trio.write("musicxml", fp=folder / "c-trio.musicxml")
    (folder / "d-broken.mxl").write_bytes(b"PK not really a zip")
    (folder / "e-analysis.rntxt").write_text("Composer: J. S. Bach\nm1 C: I\n")
    return root, sorted(folder.iterdir())


@pytest.fixture
def fake_corpus(monkeypatch, tiny_corpus):
    import music21

    root, paths = tiny_corpus
    monkeypatch.setattr(music21.corpus, "getComposer", lambda composer: list(paths))
    monkeypatch.setattr(music21.common, "getCorpusFilePath", lambda: root)
    return root


def test_bach_chorales_parses_four_part_files_and_reports_the_rest(fake_corpus, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="transformer_kit.data.music")
    splits = bach_chorales(tmp_path)
    assert sorted(len(v) for v in splits.values()) == [0, 0, 2]
    assert all(piece == CHORALE_EVENTS for pieces in splits.values() for piece in pieces)
    report = bach_chorales_report(tmp_path)
    assert (report["files"], report["parsed"], report["cache_version"]) == (5, 2, 3)
    assert sum(e.fermata for e in splits["train"][0]) == 5  # kept in the cache
    assert report["skipped"] == [
        {
            "file": "bach/c-trio.musicxml",
            "reason": "3 parts with notes, not 4 (Soprano, Tenor, Bass)",
        },
        {"file": "bach/e-analysis.rntxt", "reason": "a Roman-numeral analysis, not a score"},
    ]
    assert [f["file"] for f in report["failed"]] == ["bach/d-broken.mxl"]
    assert "failed to parse bach/d-broken.mxl" in caplog.text
    assert "skipping bach/c-trio.musicxml: 3 parts with notes" in caplog.text
    pair = ["bach/a.musicxml", "bach/b-copy.musicxml"]
    assert report["duplicates"] == [pair] and report["groups"] == [pair]
    assert [name for names in report["splits"].values() for name in names] == pair
    assert report["cache_file"] == str(tmp_path / CACHE_FILE)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CACHE_FILE]  # no temp file


def test_bach_chorales_reads_its_cache_without_music21(fake_corpus, tmp_path, monkeypatch):
    first = bach_chorales(tmp_path)
    monkeypatch.setitem(sys.modules, "music21", None)
    assert bach_chorales(tmp_path) == first
    assert bach_chorales_report(tmp_path)["parsed"] == 2


def _edit_cache(path, edit):
    cache = json.loads(path.read_text())
    edit(cache)
    path.write_text(json.dumps(cache))


@pytest.mark.parametrize(
    "damage, warning",
    [
        (lambda p: _edit_cache(p, lambda c: c.update(version=1)), "holds .* version 1, expected"),
        (lambda p: _edit_cache(p, lambda c: c.pop("splits")), "is unreadable .*'splits'"),
        (
            lambda p: _edit_cache(p, lambda c: c["pieces"][0]["events"][0].__setitem__(0, 200)),
            r"is unreadable \(NoteEvent: pitch must be an int in \[0, 127\], got 200\)",
        ),
        (
            lambda p: _edit_cache(p, lambda c: c["pieces"][0]["events"][0].__setitem__(6, 1)),
            r"is unreadable \(NoteEvent: fermata must be a bool, got 1\)",
        ),
        (
            lambda p: _edit_cache(p, lambda c: c["splits"]["train"].append(0)),
            "is unreadable .*do not cover every piece exactly once",
        ),
        (
            lambda p: _edit_cache(p, lambda c: c["duplicates"].append([0, 99])),
            "is unreadable .*its groups name pieces that do not exist",
        ),
        (lambda p: p.write_text('{"format": "transformer_kit.bach'), "is unreadable"),
        (lambda p: p.write_bytes(b"\xff\xfe"), "is unreadable"),
    ],
    ids=[
        "old-version",
        "missing-key",
        "bad-event",
        "bad-fermata",
        "bad-split",
        "bad-group",
        "truncated",
        "utf16",
    ],
)
def test_bach_chorales_rebuilds_a_bad_cache_with_a_warning(
    fake_corpus, tmp_path, caplog, damage, warning
):
    first = bach_chorales(tmp_path)
    damage(tmp_path / CACHE_FILE)
    caplog.set_level(logging.WARNING, logger="transformer_kit.data.music")
    assert bach_chorales(tmp_path) == first
    assert caplog.text.count("rebuilding it") == 1
    assert re.search(warning, caplog.text)
    assert json.loads((tmp_path / CACHE_FILE).read_text())["version"] == 3


def test_refresh_rebuilds_a_valid_cache(fake_corpus, tmp_path):
    bach_chorales(tmp_path)
    _edit_cache(tmp_path / CACHE_FILE, lambda c: c.update(build_seconds=-1.0))
    assert bach_chorales_report(tmp_path)["build_seconds"] == -1.0  # trusted as it is
    bach_chorales(tmp_path, refresh=True)
    assert bach_chorales_report(tmp_path)["build_seconds"] >= 0


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"TRANSFORMER_KIT_CACHE": "tk", "XDG_CACHE_HOME": "xdg"}, "tk"),
        ({"XDG_CACHE_HOME": "xdg"}, "xdg/transformer_kit"),
        ({"HOME": "home"}, "home/.cache/transformer_kit"),
    ],
)
def test_default_cache_folder(fake_corpus, tmp_path, monkeypatch, env, expected):
    for name in ("TRANSFORMER_KIT_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, str(tmp_path / value))
    assert bach_chorales_report()["cache_file"] == str(tmp_path / expected / CACHE_FILE)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"cache_dir": 3}, "bach_chorales: cache_dir must be a folder path .* got 3"),
        ({"cache_dir": ""}, "bach_chorales: cache_dir must be a folder path .* got ''"),
        ({"refresh": "yes"}, "bach_chorales: refresh must be a bool, got 'yes'"),
    ],
)
def test_bach_chorales_errors_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bach_chorales(**kwargs)


# --- the real corpus (parsed once per session) -----------------------------------------------


@pytest.fixture(scope="session")
def bach_cache(tmp_path_factory):
    pytest.importorskip("music21")
    folder = tmp_path_factory.mktemp("bach_cache")
    bach_chorales(folder)
    return folder


@pytest.mark.slow
def test_bach_corpus_is_four_part_chorales_split_90_5_5(bach_cache, monkeypatch):
    report = bach_chorales_report(bach_cache)
    assert report["parsed"] + len(report["skipped"]) + len(report["failed"]) == report["files"]
    assert 360 <= report["parsed"] <= 371 and report["failed"] == []
    assert all("not 4" in s["reason"] or "analysis" in s["reason"] for s in report["skipped"])
    monkeypatch.setitem(sys.modules, "music21", None)  # the cached load needs no music21
    splits = bach_chorales(bach_cache)
    sizes = {name: len(pieces) for name, pieces in splits.items()}
    assert sizes == {name: len(names) for name, names in report["splits"].items()}
    largest = max(map(len, report["groups"]))
    for name, fraction in [("train", 0.9), ("val", 0.05), ("test", 0.05)]:
        assert abs(sizes[name] - fraction * report["parsed"]) <= largest
    for piece in (p for pieces in splits.values() for p in pieces):
        assert {e.voice for e in piece} == {1, 2, 3, 4}
        assert piece == sort_events(piece) and piece[0].bar == 0
        assert all(a.bar <= b.bar for a, b in pairwise(piece))  # bars grow with time
    # Fermatas close the phrases: all but a few chorales have them, about 6.5 onsets a piece.
    pieces = [p for ps in splits.values() for p in ps]
    held = [len({e.onset for e in p if e.fermata}) for p in pieces]
    assert sum(n > 0 for n in held) >= 0.98 * len(pieces) and 5 < sum(held) / len(pieces) < 8


@pytest.mark.slow
def test_no_soprano_melody_is_in_two_splits(bach_cache):
    splits = bach_chorales(bach_cache)
    report = bach_chorales_report(bach_cache)
    where = {id(p): name for name, pieces in splits.items() for p in pieces}
    pieces = [p for ps in splits.values() for p in ps]
    by_melody: dict[tuple[int, ...], set[str]] = {}
    for piece in pieces:
        by_melody.setdefault(_intervals(piece), set()).add(where[id(piece)])
    assert all(len(names) == 1 for names in by_melody.values())
    # Near-identical by an independent measure: edit distance between the interval sequences.
    melodies = [(_intervals(p), where[id(p)]) for p in pieces]
    for i, (a, split_a) in enumerate(melodies):
        for b, split_b in melodies[i + 1 :]:
            if split_a != split_b and abs(len(a) - len(b)) < 0.2 * max(len(a), len(b)):
                assert _edit_distance(a, b) > 0.2 * max(len(a), len(b))
    named = {name: split for split, names in report["splits"].items() for name in names}
    for group in report["groups"] + report["duplicates"]:
        assert len({named[name] for name in group}) == 1
    assert ["bach/bwv197.7-a.mxl", "bach/bwv398.mxl"] in report["duplicates"]


def _edit_distance(a, b):
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


@pytest.mark.slow
def test_bach_split_is_split_pieces_of_the_corpus(bach_cache):
    splits = bach_chorales(bach_cache)
    names = bach_chorales_report(bach_cache)["splits"]
    by_name = {n: p for s in splits for n, p in zip(names[s], splits[s], strict=True)}
    corpus = [by_name[n] for n in sorted(by_name)]
    again = split_pieces(corpus)
    assert {s: Counter(map(tuple, ps)) for s, ps in again.items()} == {
        s: Counter(map(tuple, ps)) for s, ps in splits.items()
    }

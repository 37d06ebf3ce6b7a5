"""MIDI and MusicXML files to and from note events, one file or a whole folder."""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from transformer_kit.data.music._convert import (
    _music21,
    _parts_to_piece,
    _piece_to_score,
    _score_parts,
)
from transformer_kit.tokenization.events import NoteEvent, Piece, sort_events

_log = logging.getLogger(__name__)

_MIDI_SUFFIXES = frozenset({".mid", ".midi"})
# MIDI stores a tempo as microseconds per quarter in 24 bits: at most 16,777,215 us, ~3.58 bpm.
_MIN_TEMPO_BPM = 60_000_000 / 0xFFFFFF


def read_midi(path: str | os.PathLike[str]) -> Piece:
    """Read a MIDI file into events: each track (or channel) with pitched notes is a voice.

    Voices are numbered 1, 2, ... in track order; tracks without pitched notes (a conductor
    track, drums) are left out. music21 quantizes onsets and durations to 16th notes and
    eighth-note triplets; tied notes become one event; simultaneous notes in a track become one
    event each. ``bar`` counts the bars its time signatures make from time 0 (4/4 when it has
    none) and ``key`` comes from its key signature events (0 when none).

    Raises:
        FileNotFoundError: If ``path`` is not a file.
        ValueError: If ``path`` is not a path, or music21 cannot parse the file as MIDI.
        ImportError: If music21 is not installed.
    """
    path = _existing_file(path, "read_midi")
    m21 = _music21("read_midi")
    return _read_with_music21(path, m21, caller="read_midi", midi=True)


def write_midi(
    piece: Sequence[NoteEvent], path: str | os.PathLike[str], *, tempo_bpm: float = 90.0
) -> None:
    """Write events to a MIDI file, one track per voice in voice order.

    The time signature is inferred from the events' bar numbers (the commonest distance between
    the first onsets of consecutive bars; a shorter bar 0 is written as a pickup bar of its own
    length), so `read_midi` gives the bars back; key signatures follow each voice's ``key``.

    Args:
        piece: Note events, in any order.
        path: File to write; its parent folder must exist.
        tempo_bpm: Quarter notes per minute, in [3.6, 1000].

    Raises:
        ValueError: If ``piece`` is empty or holds something other than `NoteEvent`s, ``path``
            is not a path, or ``tempo_bpm`` is out of range.
        FileNotFoundError: If the folder of ``path`` does not exist.
        ImportError: If music21 is not installed.
    """
    events = _check_piece(piece, "write_midi")
    if (
        isinstance(tempo_bpm, bool)
        or not isinstance(tempo_bpm, int | float)
        or not math.isfinite(tempo_bpm)
        or not _MIN_TEMPO_BPM <= tempo_bpm <= 1000
    ):
        raise ValueError(
            f"write_midi: tempo_bpm must be a number in [3.6, 1000], got {tempo_bpm!r}"
        )
    target = _writable(path, "write_midi")
    m21 = _music21("write_midi")
    _piece_to_score(events, m21, tempo_bpm=float(tempo_bpm)).write("midi", fp=target)


def write_musicxml(piece: Sequence[NoteEvent], path: str | os.PathLike[str]) -> None:
    """Write events to a MusicXML file (one part per voice) for notation software.

    A path ending in ``.mxl`` gets compressed MusicXML; any other path, plain MusicXML text.

    Notes of one voice that start and end together are written as a chord; notes that cross a
    barline are split and tied, and music21 reads them back as one event.

    Raises:
        ValueError: If ``piece`` is empty or holds something other than `NoteEvent`s, or
            ``path`` is not a path.
        FileNotFoundError: If the folder of ``path`` does not exist.
        ImportError: If music21 is not installed.
    """
    events = _check_piece(piece, "write_musicxml")
    target = _writable(path, "write_musicxml")
    m21 = _music21("write_musicxml")
    fmt = "mxl" if target.suffix.lower() == ".mxl" else "musicxml"
    _piece_to_score(events, m21).write(fmt, fp=target)


def read_music_folder(folder: str | os.PathLike[str], *, pattern: str = "*.mid*") -> list[Piece]:
    """Read every file in ``folder`` matching ``pattern`` (a `Path.glob` pattern) into a piece.

    ``.mid``/``.midi`` files are read with `read_midi`; any other file (``.mxl``, ``.musicxml``,
    ``.xml``, ``.krn``, ...) with music21's parser. Files are read in sorted path order. A file
    that fails to parse or holds no pitched notes is skipped with a warning that names it and
    the reason; one INFO line reports how many were read and skipped.

    Raises:
        ValueError: If ``folder`` is not a path or ``pattern`` is not a non-empty string.
        NotADirectoryError: If ``folder`` is not a directory.
        FileNotFoundError: If no file matches ``pattern``.
        ImportError: If music21 is not installed.

    Example:
        >>> pieces = read_music_folder("my_midi/")  # doctest: +SKIP
        >>> splits = split_pieces(pieces)  # doctest: +SKIP
    """
    root = _as_path(folder, "folder", "read_music_folder")
    if not root.is_dir():
        raise NotADirectoryError(f"read_music_folder: folder {str(folder)!r} is not a directory")
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"read_music_folder: pattern must be a non-empty glob, got {pattern!r}")
    paths = sorted(p for p in root.glob(pattern) if p.is_file())
    if not paths:
        raise FileNotFoundError(
            f"read_music_folder: no file in {str(root)!r} matches pattern {pattern!r}"
        )
    m21 = _music21("read_music_folder")
    pieces: list[Piece] = []
    for path in paths:
        try:
            piece = _read_with_music21(
                path, m21, caller="read_music_folder", midi=path.suffix.lower() in _MIDI_SUFFIXES
            )
        except ValueError as err:
            _log.warning("read_music_folder: skipping %s: %s", path, err)
            continue
        if not piece:
            _log.warning("read_music_folder: skipping %s: no pitched notes", path)
            continue
        pieces.append(piece)
    _log.info(
        "read_music_folder: read %d of %d files from %s (%d skipped)",
        len(pieces),
        len(paths),
        root,
        len(paths) - len(pieces),
    )
    return pieces


def _read_with_music21(path: Path, m21: ModuleType, *, caller: str, midi: bool) -> Piece:
    try:
        if midi:
            score = _midi_score(path, m21)
        else:
            # forceSource: parse the file itself, not a pickle music21 keeps in its temp folder.
            score = m21.converter.parse(path, forceSource=True)
        parts = _score_parts(score, m21)
    except Exception as err:  # music21 raises many unrelated types for a malformed file
        kind = "MIDI" if midi else "a score"
        raise ValueError(f"{caller}: cannot parse {str(path)!r} as {kind}: {err}") from err
    return _parts_to_piece(parts, m21, source=str(path))


def _midi_score(path: Path, m21: ModuleType) -> Any:
    """Parse a MIDI file as music21 does, but with each channel of a track as its own part.

    music21 makes one part per track; a format-0 file keeps every instrument in one track,
    told apart only by channel, so without this split all of them would be one voice.
    """
    midi_file = m21.midi.MidiFile()
    midi_file.open(str(path))
    try:
        midi_file.read()
    finally:
        midi_file.close()
    tracks = []
    for track in midi_file.tracks:
        channels = sorted({e.channel for e in track.events if e.isNoteOn()})
        if len(channels) < 2:
            tracks.append(track)
            continue
        for channel in channels:
            # Keep this channel's events and every non-channel (meta) event, re-timed.
            split = m21.midi.MidiTrack(index=len(tracks))
            tick = last = 0
            for event in track.events:
                if event.isDeltaTime():
                    tick += event.time
                elif not event.isChannelEvent() or event.channel == channel:
                    split.events.append(m21.midi.DeltaTime(split, time=tick - last))
                    split.events.append(copy.copy(event))
                    last = tick
            split.updateEvents()
            tracks.append(split)
    midi_file.tracks = tracks
    return m21.midi.translate.midiFileToStream(midi_file)


def _check_piece(piece: Sequence[NoteEvent], caller: str) -> Piece:
    if isinstance(piece, str | bytes) or not isinstance(piece, Sequence):
        raise ValueError(f"{caller}: piece must be a list of NoteEvent, got {type(piece).__name__}")
    if not piece:
        raise ValueError(f"{caller}: piece must hold at least one NoteEvent, got an empty piece")
    for index, event in enumerate(piece):
        if not isinstance(event, NoteEvent):
            raise ValueError(
                f"{caller}: piece[{index}] must be a NoteEvent, got {type(event).__name__}"
            )
    return sort_events(piece)


def _as_path(value: str | os.PathLike[str], name: str, caller: str) -> Path:
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise ValueError(f"{caller}: {name} must be a path (str or os.PathLike), got {value!r}")
    return Path(value)


def _existing_file(path: str | os.PathLike[str], caller: str) -> Path:
    file = _as_path(path, "path", caller)
    if not file.is_file():
        raise FileNotFoundError(f"{caller}: no such file: {str(path)!r}")
    return file


def _writable(path: str | os.PathLike[str], caller: str) -> Path:
    file = _as_path(path, "path", caller)
    if not file.parent.is_dir():
        raise FileNotFoundError(
            f"{caller}: the folder of path {str(path)!r} does not exist; create it first"
        )
    return file

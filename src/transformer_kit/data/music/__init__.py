"""Music data: the Bach chorales, MIDI/MusicXML files and leak-free splits, as note events.

Every function here produces or consumes pieces: lists of `NoteEvent` (from
`transformer_kit.tokenization.events`) that `MusicTokenizer` turns into tokens.
`bach_chorales` parses music21's Bach corpus once and caches it; `read_music_folder` does the
same job for your own MIDI or MusicXML files, and `split_pieces` splits either without letting
two harmonisations of one melody straddle train and test. Reading and writing files needs
music21 (``pip install "transformer-kit[music]"``), imported only when first needed; splitting
does not.
    >>> from transformer_kit.tokenization.events import NoteEvent
    >>> a = [NoteEvent(60, 1, 0.0, 1.0), NoteEvent(62, 1, 1.0, 1.0), NoteEvent(64, 1, 2.0, 2.0)]
    >>> b = [NoteEvent(e.pitch + 7, 1, e.onset, e.duration) for e in a]  # the same tune, a fifth up
    >>> melody_groups([a, b, [NoteEvent(60, 1, 0.0, 4.0)]])
    [[0, 1], [2]]
"""

from __future__ import annotations

from transformer_kit.data.music._bach import bach_chorales, bach_chorales_report
from transformer_kit.data.music._files import (
    read_midi,
    read_music_folder,
    write_midi,
    write_musicxml,
)
from transformer_kit.data.music._split import melody_groups, split_pieces

__all__ = [
    "bach_chorales",
    "bach_chorales_report",
    "melody_groups",
    "read_midi",
    "read_music_folder",
    "split_pieces",
    "write_midi",
    "write_musicxml",
]

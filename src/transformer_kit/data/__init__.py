"""Data: token windows and batches (`datasets`), built-in corpora (`corpora`) and music (`music`).

>>> from transformer_kit.data import TokenDataset
>>> TokenDataset(list(range(10)), block_size=4).num_windows
6
"""

from __future__ import annotations

from transformer_kit.data.corpora import read_text_file, stdlib_corpus, stdlib_files
from transformer_kit.data.datasets import RandomBatches, TokenDataset, train_val_split
from transformer_kit.data.music import (
    bach_chorales,
    bach_chorales_report,
    melody_groups,
    read_midi,
    read_music_folder,
    split_pieces,
    write_midi,
    write_musicxml,
)

__all__ = [
    "RandomBatches",
    "TokenDataset",
    "bach_chorales",
    "bach_chorales_report",
    "melody_groups",
    "read_midi",
    "read_music_folder",
    "read_text_file",
    "split_pieces",
    "stdlib_corpus",
    "stdlib_files",
    "train_val_split",
    "write_midi",
    "write_musicxml",
]

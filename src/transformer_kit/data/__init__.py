"""Data: token windows and batches for training (`datasets`) and built-in corpora (`corpora`).

>>> from transformer_kit.data import TokenDataset
>>> TokenDataset(list(range(10)), block_size=4).num_windows
6
"""

from __future__ import annotations

from transformer_kit.data.corpora import read_text_file, stdlib_corpus, stdlib_files
from transformer_kit.data.datasets import RandomBatches, TokenDataset, train_val_split

__all__ = [
    "RandomBatches",
    "TokenDataset",
    "read_text_file",
    "stdlib_corpus",
    "stdlib_files",
    "train_val_split",
]

"""Tokenization: a `Vocabulary` of ordered token groups and the tokenizers built on it.

>>> from transformer_kit.tokenization import CharTokenizer
>>> CharTokenizer.fit("abc").encode("cab")
[6, 4, 5]
"""

from __future__ import annotations

from transformer_kit.tokenization.text import (
    ByteTokenizer,
    CharTokenizer,
    Tokenizer,
    load_tokenizer,
)
from transformer_kit.tokenization.vocabulary import DEFAULT_SPECIALS, SPECIAL_GROUP, Vocabulary

__all__ = [
    "DEFAULT_SPECIALS",
    "SPECIAL_GROUP",
    "ByteTokenizer",
    "CharTokenizer",
    "Tokenizer",
    "Vocabulary",
    "load_tokenizer",
]

"""Tokenization: a `Vocabulary` of ordered token groups and the tokenizers built on it.

Text goes through `CharTokenizer` or `ByteTokenizer`, note events through `MusicTokenizer`
(with `VoiceLeading` as a stricter sampling constraint than its grammar).

>>> from transformer_kit.tokenization import CharTokenizer
>>> CharTokenizer.fit("abc").encode("cab")
[6, 4, 5]
"""

from __future__ import annotations

from transformer_kit.tokenization.events import NoteEvent
from transformer_kit.tokenization.music import (
    DEFAULT_DURATIONS,
    DEFAULT_TIME_STEPS,
    MUSIC_SPECIALS,
    MusicTokenizer,
)
from transformer_kit.tokenization.text import (
    ByteTokenizer,
    CharTokenizer,
    Tokenizer,
    load_tokenizer,
)
from transformer_kit.tokenization.vocabulary import DEFAULT_SPECIALS, SPECIAL_GROUP, Vocabulary
from transformer_kit.tokenization.voicing import VoiceLeading

__all__ = [
    "DEFAULT_DURATIONS",
    "DEFAULT_SPECIALS",
    "DEFAULT_TIME_STEPS",
    "MUSIC_SPECIALS",
    "SPECIAL_GROUP",
    "ByteTokenizer",
    "CharTokenizer",
    "MusicTokenizer",
    "NoteEvent",
    "Tokenizer",
    "VoiceLeading",
    "Vocabulary",
    "load_tokenizer",
]

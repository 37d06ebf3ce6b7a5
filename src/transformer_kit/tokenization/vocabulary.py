"""Vocabulary: ordered named groups of tokens with fixed ids; special tokens come first.

Tokenizers map text to ids through a `Vocabulary`; models only ever see `len(vocab)`.
    >>> vocab = Vocabulary({"char": ["a", "b"], "digit": ["0"]})
    >>> vocab.token_to_id("a"), vocab.group_ids("digit"), vocab.group_of(5)
    (4, range(6, 7), 'char')
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_SPECIALS", "SPECIAL_GROUP", "Vocabulary"]

DEFAULT_SPECIALS: tuple[str, ...] = ("<PAD>", "<BOS>", "<EOS>", "<UNK>")
"""Special tokens of a new vocabulary, ids 0..3 in this order."""

SPECIAL_GROUP = "special"
"""Name of the group that holds the special tokens; reserved, always first."""

_FORMAT = 1
"""Version of the dictionary written by `Vocabulary.to_dict`; bump when the layout changes."""


class Vocabulary:
    """Ordered named groups of tokens with contiguous, fixed ids.

    Ids are assigned in one pass: the specials first (`specials[0]` is always "<PAD>" with id 0),
    then each group in insertion order, tokens within a group in the order given. Every token
    appears once in the whole vocabulary. A `Vocabulary` is immutable and hashable.

    Args:
        groups: group name -> tokens, e.g. `{"char": ["a", "b"]}`. A group may be empty. A bare
            string is refused as a group (pass `list("abc")` for single characters).
        specials: special tokens, in id order; the first must be "<PAD>".

    Raises:
        ValueError: on a duplicate token, an empty or reserved group name, an empty token, or
            when `specials[0]` is not "<PAD>".
        TypeError: on a non-string token or group name, or a group that is not a sequence.

    Example:
        >>> vocab = Vocabulary({"note": ["C4", "D4"]}, specials=("<PAD>", "<UNK>"))
        >>> vocab.tokens, vocab.unk_id, vocab.bos_id
        (('<PAD>', '<UNK>', 'C4', 'D4'), 1, None)
    """

    __slots__ = ("_groups", "_ids", "_specials", "_starts", "_tokens")

    def __init__(
        self,
        groups: Mapping[str, Sequence[str]],
        *,
        specials: Sequence[str] = DEFAULT_SPECIALS,
    ) -> None:
        if not isinstance(groups, Mapping):
            raise TypeError(
                f"Vocabulary: groups must be a mapping of group name -> tokens, "
                f"got {type(groups).__name__}"
            )
        specials = _check_token_list(specials, "specials")
        if not specials or specials[0] != "<PAD>":
            raise ValueError(
                f"Vocabulary: specials must start with '<PAD>' (id 0), got {list(specials)!r}"
            )
        tokens: list[str] = []
        ids: dict[str, int] = {}
        # Where each token came from, for duplicate messages: (group name, position in group).
        origin: dict[str, tuple[str, int]] = {}
        group_ranges: dict[str, range] = {}
        named: list[tuple[str, Sequence[str]]] = [(SPECIAL_GROUP, specials)]
        for name, group in groups.items():
            _check_group_name(name)
            named.append((name, _check_token_list(group, f"group {name!r}")))
        for name, group in named:
            start = len(tokens)
            for position, token in enumerate(group):
                if token in origin:
                    first_group, first_position = origin[token]
                    raise ValueError(
                        f"Vocabulary: duplicate token {token!r} in group {name!r} at position "
                        f"{position}; it is already in group {first_group!r} at position "
                        f"{first_position}. Each token may appear only once."
                    )
                origin[token] = (name, position)
                ids[token] = len(tokens)
                tokens.append(token)
            group_ranges[name] = range(start, len(tokens))
        self._specials: tuple[str, ...] = tuple(specials)
        self._tokens: tuple[str, ...] = tuple(tokens)
        self._ids = ids
        self._groups = group_ranges
        self._starts = [r.start for r in group_ranges.values()]

    # -- lookups --------------------------------------------------------------------------

    def token_to_id(self, token: str) -> int:
        """Return the id of `token`.

        Raises:
            KeyError: if `token` is not in the vocabulary.
        """
        try:
            return self._ids[token]
        except KeyError:
            raise KeyError(
                f"Vocabulary.token_to_id: token {token!r} is not in the vocabulary "
                f"(size {len(self)}); check `token in vocab` first, or use a tokenizer, "
                f"which maps unknown input to '<UNK>' (vocab.unk_id)"
            ) from None
        except TypeError:
            raise TypeError(
                f"Vocabulary.token_to_id: token must be a str, got {type(token).__name__}"
            ) from None

    def id_to_token(self, i: int) -> str:
        """Return the token with id `i`.

        Raises:
            IndexError: if `i` is not in `range(len(self))`; negative ids are refused.
        """
        return self._tokens[self._check_id(i, "id_to_token")]

    def group_ids(self, name: str) -> range:
        """Return the contiguous ids of group `name` ("special" for the specials).

        Raises:
            KeyError: if there is no such group; the message lists the valid names.
        """
        try:
            return self._groups[name]
        except KeyError:
            raise KeyError(
                f"Vocabulary.group_ids: no group named {name!r}; "
                f"valid group names are {list(self._groups)!r}"
            ) from None

    def group_of(self, i: int) -> str:
        """Return the name of the group that holds id `i`.

        Raises:
            IndexError: if `i` is not in `range(len(self))`.
        """
        i = self._check_id(i, "group_of")
        # Empty groups share their start with the next group; bisect_right skips past them.
        return self.group_names[bisect.bisect_right(self._starts, i) - 1]

    def _check_id(self, i: int, method: str) -> int:
        if isinstance(i, bool) or not hasattr(i, "__index__"):
            raise TypeError(f"Vocabulary.{method}: id must be an int, got {i!r}")
        i = i.__index__()
        if not 0 <= i < len(self._tokens):
            raise IndexError(
                f"Vocabulary.{method}: id {i} is out of range; valid ids are "
                f"0..{len(self._tokens) - 1} (vocabulary size {len(self._tokens)})"
            )
        return i

    # -- properties -----------------------------------------------------------------------

    @property
    def group_names(self) -> tuple[str, ...]:
        """All group names in id order, starting with "special"."""
        return tuple(self._groups)

    @property
    def tokens(self) -> tuple[str, ...]:
        """All tokens in id order: `tokens[i]` is the token with id `i`."""
        return self._tokens

    @property
    def specials(self) -> tuple[str, ...]:
        """The special tokens, ids `0..len(specials) - 1`."""
        return self._specials

    @property
    def pad_id(self) -> int:
        """Id of "<PAD>": always 0."""
        return 0

    @property
    def unk_id(self) -> int | None:
        """Id of "<UNK>", or None when it is not among the specials."""
        return self._special_id("<UNK>")

    @property
    def bos_id(self) -> int | None:
        """Id of "<BOS>", or None when it is not among the specials."""
        return self._special_id("<BOS>")

    @property
    def eos_id(self) -> int | None:
        """Id of "<EOS>", or None when it is not among the specials."""
        return self._special_id("<EOS>")

    def _special_id(self, token: str) -> int | None:
        return self._ids[token] if token in self._specials else None

    # -- container protocol ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, token: object) -> bool:
        return isinstance(token, str) and token in self._ids

    def __iter__(self) -> Iterator[str]:
        return iter(self._tokens)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return self._tokens == other._tokens and self._groups == other._groups

    def __hash__(self) -> int:
        return hash((self._tokens, tuple(self._groups.items())))

    def __repr__(self) -> str:
        sizes = {name: len(r) for name, r in self._groups.items()}
        return f"Vocabulary(size={len(self)}, groups={sizes!r})"

    # -- serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict: format, size, specials and the groups with their start ids.

        Groups are stored as a list (JSON objects have no order), each with its first id, so
        `from_dict` can verify that every id comes back unchanged.
        """
        return {
            "format": _FORMAT,
            "size": len(self),
            "specials": list(self._specials),
            "groups": [
                {"name": name, "start": r.start, "tokens": list(self._tokens[r.start : r.stop])}
                for name, r in self._groups.items()
                if name != SPECIAL_GROUP
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Vocabulary:
        """Rebuild a vocabulary from `to_dict` output and check that every id is unchanged.

        Raises:
            ValueError: on an unknown format, a malformed dict, or ids that would shift.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"Vocabulary.from_dict: d must be a dict, got {type(d).__name__}")
        fmt = d.get("format")
        if fmt != _FORMAT:
            raise ValueError(
                f"Vocabulary.from_dict: unsupported format {fmt!r}; this version reads "
                f"format {_FORMAT} (was the file written by a newer transformer-kit?)"
            )
        for key in ("size", "specials", "groups"):
            if key not in d:
                raise ValueError(f"Vocabulary.from_dict: missing key {key!r} in {sorted(d)!r}")
        entries = d["groups"]
        if not isinstance(entries, list) or not all(
            isinstance(e, Mapping) and {"name", "start", "tokens"} <= set(e) for e in entries
        ):
            raise ValueError(
                "Vocabulary.from_dict: 'groups' must be a list of "
                "{'name', 'start', 'tokens'} objects"
            )
        groups: dict[str, Sequence[str]] = {}
        for e in entries:
            if e["name"] in groups:
                raise ValueError(f"Vocabulary.from_dict: group {e['name']!r} appears twice")
            groups[e["name"]] = e["tokens"]
        vocab = cls(groups, specials=d["specials"])
        for e in entries:
            start = vocab.group_ids(e["name"]).start
            if start != e["start"]:
                raise ValueError(
                    f"Vocabulary.from_dict: group {e['name']!r} would start at id {start}, "
                    f"but the data says {e['start']!r}; the stored vocabulary is inconsistent"
                )
        if len(vocab) != d["size"]:
            raise ValueError(
                f"Vocabulary.from_dict: rebuilt size {len(vocab)} differs from the stored "
                f"size {d['size']!r}; the stored vocabulary is inconsistent"
            )
        return vocab

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the vocabulary to `path` as JSON (see `to_dict`)."""
        # ensure_ascii keeps any str (lone surrogates included) writable and readable back.
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocabulary:
        """Read a vocabulary written by `save`; ids come back exactly as saved.

        Raises:
            ValueError: if the file is not JSON or not a vocabulary of a known format.
        """
        text = Path(path).read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"Vocabulary.load: {os.fspath(path)!r} is not valid JSON: {e}") from e
        return cls.from_dict(data)


def _check_group_name(name: object) -> None:
    if not isinstance(name, str):
        raise TypeError(f"Vocabulary: group names must be str, got {name!r}")
    if not name:
        raise ValueError("Vocabulary: group names must be non-empty, got ''")
    if name == SPECIAL_GROUP:
        raise ValueError(
            f"Vocabulary: group name {SPECIAL_GROUP!r} is reserved for the specials; "
            f"pass special tokens with specials=... or rename the group"
        )


def _check_token_list(group: object, where: str) -> Sequence[str]:
    if isinstance(group, str | bytes) or not isinstance(group, Sequence):
        raise TypeError(
            f"Vocabulary: {where} must be a list or tuple of str tokens, got {group!r}; "
            f"for single characters pass list(text)"
        )
    for position, token in enumerate(group):
        if not isinstance(token, str):
            raise TypeError(
                f"Vocabulary: {where} has a non-string token {token!r} at position {position}"
            )
        if not token:
            raise ValueError(f"Vocabulary: {where} has an empty token '' at position {position}")
    return group

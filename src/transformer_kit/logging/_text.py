"""`TextLogger`: text records (generated samples) in a readable file that resumes cleanly."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from transformer_kit.logging._base import _log, replace_text

__all__ = ["TextLogger", "TextRecord", "read_text_log"]

# The header counts the text's lines, so a text holding header-like lines still reads back.
_HEADER = re.compile(r"=== step (-?\d+) \| (.*) \| (\d+) lines?")
_HEADER_START = b"=== step "


class TextRecord(NamedTuple):
    """One `log_text` call as `read_text_log` returns it."""

    step: int
    tag: str
    text: str


class TextLogger:
    """Append each `log_text` call to a plain-text file as a record a person can read.

    A record is a header line ``=== step 120 | sample | 3 lines``, the text's lines and a blank
    line. Each record is written in one call and flushed; opening an existing file appends to
    it, first dropping a partial last record left by a crash. Scalars (`log`) are not written
    here: pair it with a `JSONLLogger`. The file is created at the first record.

    Args:
        path: The text file; parent folders are created.
        resume_step: When resuming from a checkpoint taken at this step, first rewrite the file
            atomically keeping only records with ``step <= resume_step`` (`Trainer.resume`
            calls `rewind` instead, which does the same).

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "samples.txt"
        >>> logger = TextLogger(path)
        >>> logger.log_text("sample", "def f():\\n    return 1", step=100)
        >>> print(path.read_text(), end="")
        === step 100 | sample | 2 lines
        def f():
            return 1
        <BLANKLINE>
        >>> read_text_log(path)
        [TextRecord(step=100, tag='sample', text='def f():\\n    return 1')]
    """

    def __init__(self, path: str | os.PathLike[str], *, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._closed = False
        if resume_step is not None:
            if isinstance(resume_step, bool) or not isinstance(resume_step, int):
                raise TypeError(f"TextLogger: resume_step must be an int, got {resume_step!r}")
            self.rewind(resume_step)
        elif self.path.exists():
            records, remnant = _parse(self.path)
            if remnant:  # appending after it would corrupt the next record
                _rewrite(self.path, records)
                _log.warning("TextLogger: dropped the last %d bytes of %s", remnant, self.path)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Scalars are not this logger's: it records text only (`log_text`)."""

    def log_text(self, tag: str, text: str, step: int) -> None:
        """Append one record and flush it.

        Raises:
            ValueError: If ``tag`` holds a line break, if ``tag`` or ``text`` cannot be
                encoded as UTF-8 (a lone surrogate), or after `close`. Nothing is written then.
        """
        if self._closed:
            raise ValueError(f"TextLogger: log_text() called after close() on {str(self.path)!r}")
        if "\n" in tag or "\r" in tag:
            raise ValueError(f"TextLogger: tag must be one line, got {tag!r}")
        for name, value in (("tag", tag), ("text", text)):
            try:  # checked before the file is opened: a refused record writes nothing
                value.encode("utf-8")
            except UnicodeEncodeError as error:  # a lone surrogate, e.g. from a lax decode
                start, end = error.start, error.end
                raise ValueError(
                    f"TextLogger: {name} must be encodable as UTF-8, got {value[start:end]!r} "
                    f"at index {start} of {value[max(0, start - 20) : end + 20]!r}"
                ) from error
        record = _format(int(step), tag, text).encode("utf-8")
        # Bytes: the text's own line ends are written (and read back) as they are.
        with open(self.path, "ab") as file:
            file.write(record)
            file.flush()

    def rewind(self, step: int) -> None:
        """Drop every record after ``step`` (a resumed run is about to log those steps again).

        The file is rewritten atomically (temp file, fsync, `os.replace`): a crash leaves the
        old file or the new one, whole.
        """
        if not self.path.exists():
            return
        records, _ = _parse(self.path)
        kept = [record for record in records if record.step <= step]
        _rewrite(self.path, kept)
        _log.info("TextLogger: kept %d records with step <= %d in %s", len(kept), step, self.path)

    def close(self) -> None:
        """Refuse later records; every record is already on disk."""
        self._closed = True


def read_text_log(path: str | os.PathLike[str]) -> list[TextRecord]:
    """Read a `TextLogger` file into its records, skipping a truncated last one.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If a record other than the last is malformed.
    """
    return _parse(Path(path))[0]


def _format(step: int, tag: str, text: str) -> str:
    count = text.count("\n") + 1
    return f"=== step {step} | {tag} | {count} line{'' if count == 1 else 's'}\n{text}\n\n"


def _rewrite(path: Path, records: list[TextRecord]) -> None:
    """Replace the file atomically with these records."""
    replace_text(path, "".join(_format(*record) for record in records))


def _parse(path: Path) -> tuple[list[TextRecord], int]:
    """The records, and how many bytes follow the last whole one (a crash remnant, or 0)."""
    data = path.read_bytes()
    pieces = data.split(b"\n")
    lines = [_decode(piece, path, number) for number, piece in enumerate(pieces[:-1], start=1)]
    tail = pieces[-1]  # what follows the final line break: b"" in a whole file
    records: list[TextRecord] = []
    start, whole = 0, 0  # the first line of the next record; the bytes of the whole records
    while start < len(lines):
        match = _HEADER.fullmatch(lines[start])
        if match is None:
            raise ValueError(
                f"{str(path)!r} line {start + 1} is not a TextLogger record header: "
                f"{lines[start][:80]!r}; move the file away to start a new one"
            )
        blank = start + 1 + int(match[3])
        if blank >= len(lines):
            break  # the file ends inside this record
        if lines[blank]:
            raise ValueError(
                f"{str(path)!r} line {blank + 1}: the record of line {start + 1} should end "
                f"with a blank line here, got {lines[blank][:80]!r}"
            )
        text = "\n".join(lines[start + 1 : blank])
        records.append(TextRecord(int(match[1]), match[2], text))
        whole += sum(len(piece) + 1 for piece in pieces[start : blank + 1])
        start = blank + 1
    if start == len(lines) and tail and not _HEADER_START.startswith(tail[: len(_HEADER_START)]):
        # A crash cuts a record: after the last whole one, only a header can have begun.
        raise ValueError(
            f"{str(path)!r} line {start + 1} is not a TextLogger record header: {tail[:80]!r}"
        )
    remnant = len(data) - whole
    if remnant:
        _log.warning("%s: skipping a truncated last record at line %d", path, start + 1)
    return records, remnant


def _decode(piece: bytes, path: Path, number: int) -> str:
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{str(path)!r} line {number} is not UTF-8: {error}") from None

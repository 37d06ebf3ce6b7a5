"""`JSONLLogger`: one JSON object per line, crash-safe and resumable; `read_metrics`."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from transformer_kit.logging._base import _log, replace_text

__all__ = ["JSONLLogger", "read_metrics"]


class JSONLLogger:
    """Append one JSON object per `log` call, ``{"step": step, **metrics}``, to a file.

    Each line is flushed as it is written, so a crash loses at most the line being written.
    Integers stay integers and other values become floats; NaN and infinities are written as
    ``null`` so every line is strict JSON. Opening an existing file appends to it, first
    dropping a partial last line left by a crash.

    Args:
        path: The ``.jsonl`` file; parent folders are created.
        resume_step: When resuming from a checkpoint taken at this step, first rewrite the file
            atomically keeping only records with ``step <= resume_step``, so the resumed run
            does not log any step twice.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "metrics.jsonl"
        >>> with JSONLLogger(path) as logger:
        ...     logger.log({"loss": 2.0, "tokens": 512}, step=1)
        >>> read_metrics(path)
        [{'step': 1, 'loss': 2.0, 'tokens': 512}]
    """

    def __init__(self, path: str | os.PathLike[str], *, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            if isinstance(resume_step, bool) or not isinstance(resume_step, int):
                raise TypeError(f"JSONLLogger: resume_step must be an int, got {resume_step!r}")
            if self.path.exists():
                _rewrite_up_to(self.path, resume_step)
        elif self.path.exists():
            _drop_partial_last_line(self.path)
        self._file: TextIO | None = open(self.path, "a", encoding="utf-8", newline="")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Append ``{"step": step, **metrics}`` as one line and flush it.

        Raises:
            ValueError: If ``metrics`` has a ``"step"`` key, or after `close`.
        """
        if self._file is None:
            raise ValueError(f"JSONLLogger: log() called after close() on {str(self.path)!r}")
        if "step" in metrics:
            raise ValueError("JSONLLogger: metrics must not contain the key 'step'")
        record: dict[str, Any] = {"step": int(step)}
        record.update((str(k), _json_number(v)) for k, v in metrics.items())
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()

    def rewind(self, step: int) -> None:
        """Drop every record after ``step`` (a resumed run is about to log those steps again).

        The file is rewritten atomically, as with ``resume_step``; logging continues after it.
        """
        if self._file is not None:
            self._file.close()
        if self.path.exists():
            _rewrite_up_to(self.path, step)
        self._file = open(self.path, "a", encoding="utf-8", newline="")

    def close(self) -> None:
        """Close the file; calling it again does nothing."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> JSONLLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSONL metrics file into a list of dicts, skipping a truncated final line.

    Non-finite values come back as ``None`` (see `JSONLLogger`).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If a line other than the last is not a JSON object.
    """
    return [record for _, record in _parse_lines(Path(path))]


def _json_number(value: Any) -> int | float | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = float(value)
    return number if math.isfinite(number) else None


def _parse_lines(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Return ``(line, record)`` pairs; a last line that does not parse is a crash remnant."""
    lines = path.read_text(encoding="utf-8").splitlines()
    parsed: list[tuple[str, dict[str, Any]]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                _log.warning("%s: skipping truncated last line %d", path, number)
                break
            raise ValueError(f"{str(path)!r} line {number} is not valid JSON: {err}") from err
        if not isinstance(record, dict):
            raise ValueError(f"{str(path)!r} line {number} is not a JSON object: {line[:80]!r}")
        parsed.append((line, record))
    return parsed


def _rewrite_up_to(path: Path, resume_step: int) -> None:
    kept = []
    for line, record in _parse_lines(path):
        step = record.get("step")
        if not isinstance(step, int):
            raise ValueError(f"JSONLLogger: a record in {str(path)!r} has no int 'step': {line!r}")
        if step <= resume_step:
            kept.append(line + "\n")
    replace_text(path, "".join(kept))
    _log.info("JSONLLogger: kept %d records with step <= %d in %s", len(kept), resume_step, path)


def _drop_partial_last_line(path: Path) -> None:
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            _log.warning("JSONLLogger: dropping a partial last line of %s", path)
            f.truncate(keep)

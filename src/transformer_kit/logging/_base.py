"""The `MetricLogger` protocol, and the library logger the writers report to."""

from __future__ import annotations

import logging as _pylogging
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = ["MetricLogger"]

_log = _pylogging.getLogger("transformer_kit.logging")  # one name for the whole package


@runtime_checkable
class MetricLogger(Protocol):
    """Anything that records scalar metrics at a step.

    A logger may also define ``log_text(tag, text, step)``; callers check with ``hasattr``.
    """

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Record ``metrics`` (name -> scalar) at training step ``step``."""

    def close(self) -> None:
        """Flush and release resources; no calls follow."""


def replace_text(path: Path, text: str) -> None:
    """Replace a file's content atomically: write beside it, fsync, then rename over it.

    A crash leaves the old file or the new one, whole. The text is written as it is (no newline
    translation), and the file keeps its permissions.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if path.exists():  # mkstemp makes the file owner-only
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

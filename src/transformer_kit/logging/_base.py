"""The `MetricLogger` protocol, and the library logger the writers report to."""

from __future__ import annotations

import logging as _pylogging
from collections.abc import Mapping
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

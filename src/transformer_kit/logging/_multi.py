"""`MultiLogger`: one call fanned out to several loggers, each failure contained."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transformer_kit.logging._base import MetricLogger, _log

__all__ = ["MultiLogger"]


class MultiLogger:
    """Send each call to several loggers.

    Every logger is called even when an earlier one raises; after all were called, the first
    exception is re-raised and any later ones are logged (``logging`` at ERROR level).
    ``log_text`` and ``rewind`` go only to the loggers that define them.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> both = MultiLogger([ConsoleLogger(stream=out, progress=False)] * 2)
        >>> both.log({"loss": 1.0}, step=5)
        >>> out.getvalue().count("step 5")
        2
    """

    def __init__(self, loggers: Sequence[MetricLogger]) -> None:
        for i, logger in enumerate(loggers):
            if not isinstance(logger, MetricLogger):
                raise TypeError(
                    f"MultiLogger: loggers[{i}] must have log(metrics, step) and close(), "
                    f"got {type(logger).__name__}"
                )
        self.loggers = list(loggers)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Call ``log`` on every logger."""
        self._call_all("log", self.loggers, metrics, step)

    def log_text(self, tag: str, text: str, step: int) -> None:
        """Call ``log_text`` on every logger that has it."""
        with_text = [lg for lg in self.loggers if callable(getattr(lg, "log_text", None))]
        self._call_all("log_text", with_text, tag, text, step)

    def rewind(self, step: int) -> None:
        """Call ``rewind`` on every logger that has it (a resumed run logs those steps again)."""
        with_rewind = [lg for lg in self.loggers if callable(getattr(lg, "rewind", None))]
        self._call_all("rewind", with_rewind, step)

    def close(self) -> None:
        """Call ``close`` on every logger."""
        self._call_all("close", self.loggers)

    @staticmethod
    def _call_all(method: str, loggers: Sequence[Any], *args: Any) -> None:
        errors: list[BaseException] = []
        for logger in loggers:
            try:
                getattr(logger, method)(*args)
            except Exception as err:  # the others must still run
                if errors:
                    _log.error(
                        "MultiLogger: %s.%s failed", type(logger).__name__, method, exc_info=err
                    )
                errors.append(err)
        if errors:
            raise errors[0]

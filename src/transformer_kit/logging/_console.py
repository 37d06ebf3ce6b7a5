"""`ConsoleLogger`: progress and metrics on a terminal, with or without tqdm."""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from transformer_kit.logging._base import _log

__all__ = ["ConsoleLogger"]


class ConsoleLogger:
    """Print one readable line per record, or drive a tqdm progress bar.

    Training records give ``step 120/2000 | loss 2.3456 | lr 3.00e-04 | grad_norm 0.812 |
    tok/s 12,345 | eta 3m12s`` every ``every`` steps and at the last step; a record with any
    ``val_*`` key gives ``eval step 120 | val_loss 2.1000 | ...`` at every call. Keys keep the
    record's order.
    Formats: names with ``lr`` in scientific notation, ``grad_norm`` with 3 decimals, ints and
    values of 1,000 or more as whole numbers with thousands separators, other floats with 4
    decimals. ``tokens_per_s`` and ``tokens_per_sec`` are shown as ``tok/s``. The ETA
    extrapolates the mean time per step over the last 20 training records and needs
    ``total_steps``.

    Args:
        total_steps: The run's last step; enables ``step i/N``, the ETA and the bar's total.
        stream: Where to write; ``None`` means ``sys.stdout``. The logger never closes it.
        every: Print a training line only when ``step % every == 0`` or at ``total_steps``.
        progress: Use a tqdm bar (``True``) or plain lines (``False``). ``None`` picks the bar
            when ``stream`` is a TTY and tqdm is installed.
        clock: Seconds as a float, monotonic; replace it only in tests.
    """

    def __init__(
        self,
        *,
        total_steps: int | None = None,
        stream: TextIO | None = None,
        every: int = 1,
        progress: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"ConsoleLogger: every must be an int >= 1, got {every!r}")
        if total_steps is not None and (not isinstance(total_steps, int) or total_steps < 1):
            raise ValueError(
                f"ConsoleLogger: total_steps must be None or an int >= 1, got {total_steps!r}"
            )
        self.total_steps = total_steps
        self.every = every
        self._stream = stream if stream is not None else sys.stdout
        self._clock = clock
        self._times: deque[tuple[int, float]] = deque(maxlen=20)
        self._bar: Any = None
        if progress is None:
            isatty = getattr(self._stream, "isatty", None)
            progress = bool(isatty and isatty()) and _tqdm_class() is not None
        if progress:
            tqdm = _tqdm_class()
            if tqdm is None:
                _log.warning("ConsoleLogger: tqdm is not installed; printing plain lines")
            else:
                self._bar = tqdm(total=total_steps, file=self._stream, dynamic_ncols=True)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Print (or show on the bar) one record."""
        fields = " | ".join(f"{_display_name(k)} {_format_value(k, v)}" for k, v in metrics.items())
        if any(k.startswith("val_") for k in metrics):
            self._write(f"eval step {step} | {fields}" if fields else f"eval step {step}")
            return
        now = self._clock()
        self._times.append((step, now))
        eta = self._eta(step)
        if self._bar is not None:
            self._bar.update(max(step - self._bar.n, 0))
            self._bar.set_postfix_str(fields, refresh=True)
            return
        if step % self.every and step != self.total_steps:
            return
        head = f"step {step}" if self.total_steps is None else f"step {step}/{self.total_steps}"
        parts = [head] + ([fields] if fields else []) + ([f"eta {eta}"] if eta else [])
        self._write(" | ".join(parts))

    def log_text(self, tag: str, text: str, step: int) -> None:
        """Print ``text`` under a ``--- tag (step N) ---`` header."""
        self._write(f"--- {tag} (step {step}) ---\n{text}")

    def close(self) -> None:
        """Close the progress bar (if any) and flush the stream; the stream stays open."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._stream.flush()

    def _write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self._stream)
        else:
            self._stream.write(line + "\n")
            self._stream.flush()

    def _eta(self, step: int) -> str | None:
        if self.total_steps is None or len(self._times) < 2:
            return None
        (first_step, first_time), (last_step, last_time) = self._times[0], self._times[-1]
        if last_step <= first_step:
            return None
        seconds_per_step = (last_time - first_time) / (last_step - first_step)
        return _format_duration(seconds_per_step * max(self.total_steps - step, 0))


def _tqdm_class() -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


_DISPLAY_NAMES = {"tokens_per_s": "tok/s", "tokens_per_sec": "tok/s"}


def _display_name(key: str) -> str:
    return _DISPLAY_NAMES.get(key, key)


def _format_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    number = float(value)
    if not math.isfinite(number):
        return str(number)
    if "lr" in key.split("_"):
        return f"{number:.2e}"
    if abs(number) >= 1000 or key.startswith("tokens_per_s"):
        return f"{number:,.0f}"
    if key.endswith("_mb"):
        return f"{number:,.1f}"
    if key == "grad_norm":
        return f"{number:.3f}"
    return f"{number:.4f}"


def _format_duration(seconds: float) -> str:
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"

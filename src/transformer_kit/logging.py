"""Metric loggers: a two-method `MetricLogger` protocol and JSONL, TensorBoard and console writers.

The trainer calls ``log(metrics, step)`` on whatever loggers it is given; `MultiLogger` fans one
call out to several, and `plot_metrics` turns a JSONL file into a PNG.
    >>> import io
    >>> ConsoleLogger(stream=(out := io.StringIO()), progress=False).log({"loss": 2.5}, step=3)
    >>> out.getvalue()
    'step 3 | loss 2.5000\\n'
"""

from __future__ import annotations

import json
import logging as _pylogging
import math
import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO, runtime_checkable

__all__ = [
    "ConsoleLogger",
    "JSONLLogger",
    "MetricLogger",
    "MultiLogger",
    "TensorBoardLogger",
    "plot_metrics",
    "read_metrics",
]

_log = _pylogging.getLogger(__name__)


@runtime_checkable
class MetricLogger(Protocol):
    """Anything that records scalar metrics at a step.

    A logger may also define ``log_text(tag, text, step)``; callers check with ``hasattr``.
    """

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Record ``metrics`` (name -> scalar) at training step ``step``."""

    def close(self) -> None:
        """Flush and release resources; no calls follow."""


# ---------------------------------------------------------------------------------------------
# JSONL


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
        self._file: TextIO | None = open(self.path, "a", encoding="utf-8")

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
        self._file = open(self.path, "a", encoding="utf-8")

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
    # Write beside the target, fsync, then rename: a crash leaves the old or the new file whole.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _log.info("JSONLLogger: kept %d records with step <= %d in %s", len(kept), resume_step, path)


def _drop_partial_last_line(path: Path) -> None:
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            _log.warning("JSONLLogger: dropping a partial last line of %s", path)
            f.truncate(keep)


# ---------------------------------------------------------------------------------------------
# TensorBoard


class TensorBoardLogger:
    """Write scalars and text to TensorBoard event files in ``log_dir``.

    Non-finite values are logged as they are (TensorBoard shows NaN and infinities).

    Example:
        >>> import tempfile
        >>> logger = TensorBoardLogger(tempfile.mkdtemp())
        >>> logger.log({"loss": 2.0}, step=1)
        >>> logger.close()
    """

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        # Imported here: torch.utils.tensorboard pulls in tensorboard, slow to import.
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self._writer_class = SummaryWriter
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def rewind(self, step: int) -> None:
        """Hide events after ``step`` from TensorBoard (a resumed run logs them again).

        Reopens the writer with ``purge_step=step + 1``, TensorBoard's own mechanism for
        discarding events of a crashed run at or after that step.
        """
        self._writer.close()
        self._writer = self._writer_class(log_dir=str(self.log_dir), purge_step=step + 1)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Add one scalar per metric at ``step``."""
        for key, value in metrics.items():
            self._writer.add_scalar(key, float(value), global_step=step)

    def log_text(self, tag: str, text: str, step: int) -> None:
        """Add a text entry (rendered as Markdown by TensorBoard)."""
        self._writer.add_text(tag, text, global_step=step)

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()


# ---------------------------------------------------------------------------------------------
# Console


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


# ---------------------------------------------------------------------------------------------
# Fan-out


class MultiLogger:
    """Send each call to several loggers.

    Every logger is called even when an earlier one raises; after all were called, the first
    exception is re-raised and any later ones are logged (``logging`` at ERROR level).
    ``log_text`` goes only to the loggers that define it.

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


# ---------------------------------------------------------------------------------------------
# Plots

_DEFAULT_PLOT_KEYS = ("loss", "val_loss", "lr", "grad_norm")
_LOSS_KEYS = frozenset({"loss", "val_loss"})


def plot_metrics(
    metrics_jsonl: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    *,
    keys: Sequence[str] | None = None,
) -> Path:
    """Plot metrics from a JSONL file against step into a PNG; returns the PNG's path.

    ``loss`` and ``val_loss`` share the first panel; every other key gets its own panel.
    Keys that no record has are left out, and records lacking a key add no point for it.
    Needs matplotlib (``pip install 'transformer-kit[plot]'``); draws with the Agg canvas and
    never touches ``pyplot``'s global state.

    Args:
        metrics_jsonl: A file written by `JSONLLogger`.
        out_png: Where to save the figure; parent folders are created.
        keys: Metrics to plot; ``None`` means ``("loss", "val_loss", "lr", "grad_norm")``.

    Raises:
        ImportError: If matplotlib is not installed.
        ValueError: If none of ``keys`` occurs in the file.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "plot_metrics needs matplotlib: pip install 'transformer-kit[plot]'"
        ) from err
    records = read_metrics(metrics_jsonl)
    wanted = list(_DEFAULT_PLOT_KEYS if keys is None else keys)
    series = {key: _series(records, key) for key in wanted}
    series = {key: points for key, points in series.items() if points[0]}
    if not series:
        found = sorted({k for r in records for k in r} - {"step"})
        raise ValueError(
            f"plot_metrics: none of keys {wanted} occurs in {str(metrics_jsonl)!r}; it has {found}"
        )
    panels: list[list[str]] = []
    loss_panel = [key for key in series if key in _LOSS_KEYS]
    if loss_panel:
        panels.append(loss_panel)
    panels.extend([key] for key in series if key not in _LOSS_KEYS)

    figure = Figure(figsize=(8, 2.8 * len(panels)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels, strict=True):
        for key in panel:
            steps, values = series[key]
            ax.plot(steps, values, label=key, marker="o" if len(steps) < 50 else None)
        ax.set_ylabel(" / ".join(panel))
        if "lr" in panel:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        if len(panel) > 1:
            ax.legend()
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    return out


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    steps: list[int] = []
    values: list[float] = []
    for record in records:
        if key in record and "step" in record:
            value = record[key]
            steps.append(int(record["step"]))
            values.append(math.nan if value is None else float(value))
    return steps, values

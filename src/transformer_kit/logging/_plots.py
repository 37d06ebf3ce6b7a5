"""`plot_metrics`: metric curves from a JSONL file into a PNG."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transformer_kit.logging._jsonl import read_metrics

__all__ = ["plot_metrics"]

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
        out_png: Where to save the figure; parent folders are created. Its suffix names the
            format: any that matplotlib's Agg canvas writes (``.png``, ``.pdf``, ``.svg``, ...).
        keys: Metrics to plot; ``None`` means ``("loss", "val_loss", "lr", "grad_norm")``.

    Raises:
        ImportError: If matplotlib is not installed.
        ValueError: If none of ``keys`` occurs in the file, or if ``out_png`` has no suffix
            matplotlib writes, is a folder, or lies under a file. Checked before reading.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "plot_metrics needs matplotlib: pip install 'transformer-kit[plot]'"
        ) from err
    out = Path(out_png)
    _check_out(out, FigureCanvasAgg.get_supported_filetypes())
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
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    return out


def _check_out(out: Path, formats: Mapping[str, str]) -> None:
    """Refuse an output path savefig would reject, or misname, before anything is read."""
    where = f"plot_metrics: out_png {str(out)!r}"
    if out.suffix.lower().removeprefix(".") not in formats:
        allowed = ", ".join(f".{name}" for name in sorted(formats))
        raise ValueError(f"{where} must end in a suffix matplotlib writes ({allowed})")
    if out.is_dir():
        raise ValueError(f"{where} is a folder; name a file, e.g. {str(out / 'loss.png')!r}")
    existing = out.parent
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{where}: {str(existing)!r} is a file, so no folder can be made under it")


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    steps: list[int] = []
    values: list[float] = []
    for record in records:
        if key in record and "step" in record:
            value = record[key]
            steps.append(int(record["step"]))
            values.append(math.nan if value is None else float(value))
    return steps, values

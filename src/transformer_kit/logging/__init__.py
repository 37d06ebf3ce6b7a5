"""Loggers: a two-method `MetricLogger` protocol and JSONL, TensorBoard, text and console writers.

The trainer calls ``log(metrics, step)`` on whatever loggers it is given; `MultiLogger` fans one
call out to several, and `plot_metrics` turns a JSONL file into a PNG.
    >>> import io
    >>> ConsoleLogger(stream=(out := io.StringIO()), progress=False).log({"loss": 2.5}, step=3)
    >>> out.getvalue()
    'step 3 | loss 2.5000\\n'
"""

from __future__ import annotations

from transformer_kit.logging._base import MetricLogger
from transformer_kit.logging._console import ConsoleLogger
from transformer_kit.logging._jsonl import JSONLLogger, read_metrics
from transformer_kit.logging._multi import MultiLogger
from transformer_kit.logging._plots import plot_metrics
from transformer_kit.logging._tensorboard import TensorBoardLogger
from transformer_kit.logging._text import TextLogger, TextRecord, read_text_log

__all__ = [
    "ConsoleLogger",
    "JSONLLogger",
    "MetricLogger",
    "MultiLogger",
    "TensorBoardLogger",
    "TextLogger",
    "TextRecord",
    "plot_metrics",
    "read_metrics",
    "read_text_log",
]

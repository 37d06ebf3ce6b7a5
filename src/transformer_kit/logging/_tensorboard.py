"""`TensorBoardLogger`: scalars and text into TensorBoard event files."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["TensorBoardLogger"]


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
        # Opened at the first event, so that a run that stops before logging (a refused resume,
        # say) leaves no empty event file behind.
        self._writer: Any = None
        self._purge_step: int | None = None

    def _open(self) -> Any:
        if self._writer is None:
            self._writer = self._writer_class(
                log_dir=str(self.log_dir), purge_step=self._purge_step
            )
            self._purge_step = None  # one purge per rewind: a later file must not hide events
        return self._writer

    def rewind(self, step: int) -> None:
        """Hide events after ``step`` from TensorBoard (a resumed run logs them again).

        The next event opens a writer with ``purge_step=step + 1``, TensorBoard's own mechanism
        for discarding events of a crashed run at or after that step.
        """
        self.close()
        self._purge_step = step + 1

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Add one scalar per metric at ``step``."""
        writer = self._open()
        for key, value in metrics.items():
            writer.add_scalar(key, float(value), global_step=step)

    def log_text(self, tag: str, text: str, step: int) -> None:
        """Add a text entry (rendered as Markdown by TensorBoard)."""
        self._open().add_text(tag, text, global_step=step)

    def close(self) -> None:
        """Flush and close the event file; a later event opens a new one."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

"""The run folder: refuse one that cannot be written, or that holds another run, before writing."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["check_run_folder"]

_SHOWN = 4  # entries named in the message about an earlier run


def check_run_folder(
    folder: str | os.PathLike[str],
    *,
    resume: bool = False,
    flag: str = "--out-dir",
    resume_flag: str = "--resume",
) -> Path:
    """Check that a run may write into ``folder``, before it writes anything there.

    Refused: a path that is a file or lies under one, a broken symbolic link, a folder (or, for
    one still to be made, its nearest existing parent) this process may not write into, and,
    unless ``resume``, a folder that already holds files: a new run there would mix its
    metrics, samples and checkpoints with the earlier run's. Hidden entries (``.gitkeep``) do
    not count. Nothing is created: a distributed run calls this on every rank before any rank
    writes, then makes the folder.

        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp()) / "run"
        >>> check_run_folder(run) == run
        True
        >>> run.mkdir(); _ = (run / "metrics.jsonl").write_text("{}")
        >>> check_run_folder(run, resume=True) == run
        True
        >>> check_run_folder(run)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: --out-dir .../run holds an earlier run (metrics.jsonl): ...

    Args:
        folder: the run folder; it need not exist yet.
        resume: the run continues the one in ``folder``, so its files are expected.
        flag: how the caller's user names ``folder`` (a command-line flag or a parameter name),
            for the messages.
        resume_flag: how that user asks to continue a run (``"resume=True"`` for a function),
            for the message about an earlier run.

    Returns:
        ``folder`` as a `Path`.

    Raises:
        ValueError: naming ``flag``, the path and what is wrong with it.
    """
    path = Path(folder)
    if path.is_symlink() and not path.exists():
        raise ValueError(f"{flag} {path} is a broken symbolic link; name a folder")
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        if existing == path:
            raise ValueError(f"{flag} {path} is a file, not a folder; name a new or empty folder")
        raise ValueError(f"{flag} {path}: {existing} is a file, so no folder can be made under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: this process may not write into {existing}")
    if resume or existing != path:
        return path
    entries = sorted(entry.name for entry in path.iterdir() if not entry.name.startswith("."))
    if entries:
        shown = ", ".join(entries[:_SHOWN]) + (", ..." if len(entries) > _SHOWN else "")
        raise ValueError(
            f"{flag} {path} holds an earlier run ({shown}): {resume_flag} continues it; "
            "to start a new run, name a new or empty folder"
        )
    return path

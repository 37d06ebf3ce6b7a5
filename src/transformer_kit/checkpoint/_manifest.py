"""The manifest: a checkpoint folder's commit record, its rotation and its crash recovery.

`manifest.json` lists each checkpoint (``name -> step, metrics, sha256, size, time, seq``) with
the best metric and step. It is replaced last in a save, so it is the commit marker. Before the
renames, a journal (`manifest.pending.json`) records the manifest the save is about to commit;
after a crash, `recover` adopts each final file that already holds the journal's content and
keeps the committed entry for everything else. `merge_journal` is that merge alone, touching no
file, for a read-only reader.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from transformer_kit._version import __version__
from transformer_kit.checkpoint._atomic import CheckpointError, fsync_folder, sha256_file
from transformer_kit.checkpoint._state import FORMAT_VERSION

__all__ = [
    "JOURNAL_NAME",
    "MANIFEST_NAME",
    "checkpoint_path",
    "empty_manifest",
    "encode_metric",
    "finish",
    "json_writer",
    "merge_journal",
    "periodic_newest_first",
    "read_journal",
    "read_manifest",
    "recover",
    "rotate",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
JOURNAL_NAME = "manifest.pending.json"

_PERIODIC = re.compile(r"step-\d{8,}")


def checkpoint_path(folder: Path, name: str) -> Path:
    """The file of the entry `name` ("last", "best", "step-00000400")."""
    return folder / f"{name}.pt"


def empty_manifest(monitor: str, mode: str) -> dict[str, Any]:
    """The manifest of a folder with no checkpoints yet."""
    return {
        "format": FORMAT_VERSION,
        "library": __version__,
        "monitor": monitor,
        "mode": mode,
        "best_metric": None,
        "best_step": None,
        "checkpoints": {},
    }


def encode_metric(value: float) -> float | str:
    """A metric as standard JSON: NaN and infinities become "nan", "inf", "-inf"."""
    return value if math.isfinite(value) else str(value)


def periodic_newest_first(manifest: dict[str, Any]) -> list[str]:
    """The periodic entries, most recently saved first."""
    entries = manifest["checkpoints"]
    periodic = (name for name in entries if _PERIODIC.fullmatch(name))
    return sorted(periodic, key=lambda name: entries[name]["seq"], reverse=True)


def rotate(manifest: dict[str, Any], keep_last: int) -> list[str]:
    """Drop all but the newest `keep_last` periodic entries; returns their file names."""
    dropped = periodic_newest_first(manifest)[keep_last:]
    for name in dropped:
        del manifest["checkpoints"][name]
    return [checkpoint_path(Path(), name).name for name in dropped]


def read_manifest(path: Path, key: str = "checkpoints") -> dict[str, Any]:
    """Read a manifest (or, with ``key="manifest"``, a journal).

    Raises:
        CheckpointError: when it is not valid JSON, has no `key` object, or is in a newer format.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(
            f"{path} is unreadable ({error}); it is written atomically, so something else "
            f"changed it: restore it or move the folder aside"
        ) from error
    if not isinstance(data, dict) or not isinstance(data.get(key), dict):
        raise CheckpointError(f"{path} is not a checkpoint manifest (no {key!r} object)")
    found = data.get("format", data[key].get("format"))
    if isinstance(found, int) and found > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} uses manifest format {found}, but transformer-kit {__version__} reads "
            f"formats up to {FORMAT_VERSION}: upgrade transformer-kit to use this folder"
        )
    return data


def json_writer(data: object) -> Callable[[BinaryIO], object]:
    """A writer for `atomic_write` that stores `data` as indented, standard JSON."""
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
    return lambda file: file.write(text.encode("utf-8"))


def read_journal(path: Path) -> dict[str, Any] | None:
    """The journal at `path`; None when there is none, or when it is unreadable (logged).

    A journal that vanishes before it is read (a live save has just committed) counts as none.
    """
    try:
        return read_manifest(path, key="manifest")
    except CheckpointError as error:
        if not isinstance(error.__cause__, FileNotFoundError):
            logger.warning("ignoring an unreadable journal: %s", error)
        return None


def merge_journal(
    folder: Path, committed: dict[str, Any], journal: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """The manifest an interrupted save leaves, and the file names its commit left to delete.

    Adopts each final file whose content is what the journal planned and keeps the committed
    entry for everything else. Only reads the folder: the caller decides whether to delete.
    """
    planned = journal["manifest"]
    if planned == committed:  # the commit happened; only the deletions may be left
        return committed, list(journal.get("remove", []))
    result = copy.deepcopy(committed)
    for name, entry in planned["checkpoints"].items():
        old = committed["checkpoints"].get(name)
        path = checkpoint_path(folder, name)
        if entry == old or not path.is_file():
            continue
        try:
            digest = sha256_file(path)
        except FileNotFoundError:  # a save in another process rotated it away meanwhile
            continue
        if digest == entry["sha256"]:
            logger.warning("adopting %s (step %d) from an unfinished save", path, entry["step"])
            result["checkpoints"][name] = entry
            if name == "best":
                result.update(best_metric=planned["best_metric"], best_step=planned["best_step"])
        elif old is not None and digest != old["sha256"]:
            logger.warning("%s matches neither manifest; it is no longer listed", path)
            del result["checkpoints"][name]
    return result, []


def recover(folder: Path, committed: dict[str, Any], journal_path: Path) -> dict[str, Any]:
    """Merge an interrupted save (see `merge_journal`) and delete the files its commit left."""
    journal = read_journal(journal_path)
    if journal is None:
        return committed
    manifest, leftover = merge_journal(folder, committed, journal)
    for file_name in leftover:
        _unlink(folder / file_name)
    return manifest


def finish(folder: Path, removed: list[str]) -> None:
    """Delete rotated-out files and the journal after a commit; failures are only logged."""
    try:
        for file_name in removed:
            _unlink(folder / file_name)
        _unlink(folder / JOURNAL_NAME)
        fsync_folder(folder)
    except (CheckpointError, OSError) as error:
        logger.warning("cleanup in %s failed (the save is committed): %s", folder, error)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

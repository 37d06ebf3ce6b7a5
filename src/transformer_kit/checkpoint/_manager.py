"""CheckpointManager: a run's `last`, `best` and newest periodic checkpoints in one folder.

One `save` serialises the state once, to a temporary `last.pt`; `best.pt` and the periodic
`step-{step:08d}.pt` get hard links to it (or fsynced copies). A journal records the manifest
about to be committed, the temporary files are renamed onto their final names, `manifest.json`
is replaced (the commit), and rotated-out files and the journal are deleted. Every file is
written temp -> fsync -> rename -> fsync folder. Reopening the folder after a crash finishes or
rolls back an interrupted save (see `_manifest.recover`).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from transformer_kit._version import __version__
from transformer_kit.checkpoint._atomic import (
    CheckpointError,
    atomic_write,
    discard,
    link_prepared,
    prepare,
    publish,
    remove_temp_files,
    sha256_file,
)
from transformer_kit.checkpoint._manifest import (
    JOURNAL_NAME,
    MANIFEST_NAME,
    checkpoint_path,
    empty_manifest,
    encode_metric,
    finish,
    json_writer,
    merge_journal,
    periodic_newest_first,
    read_journal,
    read_manifest,
    recover,
    rotate,
)
from transformer_kit.checkpoint._state import checkpoint_payload, load_checkpoint

__all__ = ["CheckpointManager", "Mode"]

logger = logging.getLogger(__name__)

Mode = Literal["min", "max"]


class CheckpointManager:
    """Keeps `last.pt`, `best.pt` and the newest `keep_last` periodic checkpoints in a folder.

    Example:
        >>> manager = CheckpointManager("runs/a/checkpoints", every_steps=1000)
        >>> manager.save({"model": model, "step": 1000}, step=1000, metrics={"val_loss": 2.1})
        >>> name, state = manager.load_latest_good()

    Args:
        directory: the folder (created if needed). Reopening it continues best tracking.
        keep_last: how many periodic ``step-{step:08d}.pt`` files to keep, newest first.
        monitor: the metric that decides `best`.
        mode: "min" when lower is better (a loss), "max" when higher is (an accuracy).
        every_steps: write a periodic checkpoint when ``step % every_steps == 0``; None: never.
        read_only: only read the folder, which must exist: nothing is created, written,
            deleted, tidied or rotated, so a reader (``transformer-kit inspect``, a sampling
            script) is safe beside the process that saves there, whatever its ``keep_last``.
            A pending journal is merged in memory, so the reader sees what a writing open
            would recover. The manifest's own ``monitor`` and ``mode`` are kept; `save` raises.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        keep_last: int = 3,
        monitor: str = "val_loss",
        mode: Mode = "min",
        every_steps: int | None = None,
        read_only: bool = False,
    ) -> None:
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(f"CheckpointManager: keep_last must be an int >= 1, got {keep_last!r}")
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"CheckpointManager: monitor must be a metric name, got {monitor!r}")
        if mode not in get_args(Mode):
            raise ValueError(
                f"CheckpointManager: mode must be one of {get_args(Mode)}, got {mode!r}"
            )
        if every_steps is not None and (
            isinstance(every_steps, bool) or not isinstance(every_steps, int) or every_steps < 1
        ):
            raise ValueError(
                f"CheckpointManager: every_steps must be an int >= 1 or None, got {every_steps!r}"
            )
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.monitor = monitor
        self.mode: Mode = mode
        self.every_steps = every_steps
        if not isinstance(read_only, bool):
            raise ValueError(f"CheckpointManager: read_only must be a bool, got {read_only!r}")
        self.read_only = read_only
        if read_only:
            self._manifest = self._read()
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CheckpointError(f"cannot create the folder {self.directory}: {error}") from error
        self._manifest = self._open()

    # ------------------------------------------------------------------ reading state
    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of the committed manifest (as in `manifest.json`)."""
        return copy.deepcopy(self._manifest)

    @property
    def best_metric(self) -> float | None:
        """The best monitored value so far; None before the first one."""
        value = self._manifest["best_metric"]
        return None if value is None else float(value)

    @property
    def best_step(self) -> int | None:
        """The step whose state is in `best.pt`; None before the first one."""
        return self._manifest["best_step"]

    @property
    def last_step(self) -> int | None:
        """The step whose state is in `last.pt`; None before the first save."""
        last = self._manifest["checkpoints"].get("last")
        return None if last is None else int(last["step"])

    def exists(self, name: str) -> bool:
        """Whether the manifest lists `name` ("last", "best", "step-00000400") and it exists."""
        name = _entry_name(name)
        return name in self._manifest["checkpoints"] and self._path(name).is_file()

    # ------------------------------------------------------------------ saving
    def save(
        self,
        state: Mapping[str, Any],
        *,
        step: int,
        metrics: Mapping[str, float] | None = None,
    ) -> list[Path]:
        """Write `last.pt`, plus `best.pt` and `step-{step:08d}.pt` when due; returns the paths.

        `best` is written when `metrics[monitor]` improves on the best so far (NaN never does);
        the periodic file when `every_steps` divides `step`. The state is serialised once.

        Raises:
            CheckpointError: when a write fails; the committed checkpoints stay intact.
        """
        if self.read_only:
            raise CheckpointError(f"CheckpointManager: {self.directory} was opened read_only")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"CheckpointManager.save: step must be an int >= 0, got {step!r}")
        values = _metric_values(metrics)
        payload = checkpoint_payload(state)
        names = ["last"]
        if self.every_steps is not None and step % self.every_steps == 0:
            names.append(f"step-{step:08d}")
        value = values.get(self.monitor)
        improved = value is not None and self._improves(value)
        if improved:
            names.append("best")
        if self.last_step is not None and step < self.last_step:
            logger.warning(
                "saving step %d after step %d (resumed from older)", step, self.last_step
            )

        new = copy.deepcopy(self._manifest)
        new.update(library=__version__, monitor=self.monitor, mode=self.mode)
        entry = {
            "step": step,
            "metrics": {key: encode_metric(number) for key, number in values.items()},
            "seq": 1 + max((e["seq"] for e in new["checkpoints"].values()), default=0),
        }
        prepared = [prepare(self._path("last"), lambda file: torch.save(payload, file))]
        try:
            prepared += [link_prepared(prepared[0], self._path(name)) for name in names[1:]]
            entry.update(sha256=prepared[0].sha256, size=prepared[0].size, time=time.time())
            for name in names:
                new["checkpoints"][name] = dict(entry)
            if improved and value is not None:
                new.update(best_metric=encode_metric(value), best_step=step)
            removed = rotate(new, self.keep_last)
            atomic_write(
                self.directory / JOURNAL_NAME, json_writer({"manifest": new, "remove": removed})
            )
        except BaseException:
            discard(prepared)
            raise
        try:
            publish(prepared)
            atomic_write(self.directory / MANIFEST_NAME, json_writer(new))  # the commit
        except BaseException:
            self._recover_after_failure()
            raise
        self._manifest = new
        finish(self.directory, removed)
        return [item.final for item in prepared]

    # ------------------------------------------------------------------ loading
    def load(self, name: str = "last", *, map_location: str | torch.device | None = "cpu") -> dict:
        """Load a checkpoint after checking it against the manifest's sha256.

        Raises:
            CheckpointError: when `name` is not listed, or its file is missing, truncated or
                corrupt; the message names the file and the previous good checkpoint.
        """
        name = _entry_name(name)
        if name not in self._manifest["checkpoints"]:
            listed = ", ".join(self._candidates()) or "none"
            raise CheckpointError(f"no checkpoint {name!r} in {self.directory}; it lists: {listed}")
        problem = self._problem(name)
        if problem is not None:
            raise CheckpointError(f"{self._path(name)} is {problem}; {self._previous_good(name)}")
        try:
            return load_checkpoint(self._path(name), map_location=map_location)
        except CheckpointError as error:
            raise CheckpointError(f"{error}; {self._previous_good(name)}") from error

    def load_latest_good(
        self, *, map_location: str | torch.device | None = "cpu"
    ) -> tuple[str, dict] | None:
        """The newest checkpoint that verifies and loads, as ``(name, state)``; None if none does.

        Tries `last`, then the periodic checkpoints newest first, then `best`.
        """
        for name in self._candidates():
            problem = self._problem(name)
            if problem is not None:
                logger.warning("%s is %s; trying an older checkpoint", self._path(name), problem)
                continue
            try:
                return name, load_checkpoint(self._path(name), map_location=map_location)
            except CheckpointError as error:
                logger.warning("%s; trying an older checkpoint", error)
        return None

    # ------------------------------------------------------------------ private
    def _path(self, name: str) -> Path:
        return checkpoint_path(self.directory, name)

    def _improves(self, value: float) -> bool:
        best = self.best_metric
        if math.isnan(value):
            return False
        if best is None:
            return True
        return value < best if self.mode == "min" else value > best

    def _candidates(self) -> list[str]:
        periodic = periodic_newest_first(self._manifest)
        entries = self._manifest["checkpoints"]
        return [name for name in ("last", *periodic, "best") if name in entries]

    def _problem(self, name: str) -> str | None:
        """What is wrong with a listed file, or None when it matches the manifest."""
        entry = self._manifest["checkpoints"][name]
        try:
            size = self._path(name).stat().st_size
            if size != entry["size"]:
                return f"corrupt ({size} bytes, the manifest records {entry['size']})"
            if sha256_file(self._path(name)) != entry["sha256"]:
                return "corrupt (sha256 mismatch)"
        except FileNotFoundError:
            return "missing"
        except OSError as error:
            return f"unreadable ({error})"
        return None

    def _previous_good(self, failed: str) -> str:
        for name in self._candidates():
            if name != failed and self._problem(name) is None:
                step = self._manifest["checkpoints"][name]["step"]
                return f"the previous good checkpoint is {self._path(name)} (step {step})"
        return f"no other checkpoint in {self.directory} verifies"

    def _read(self) -> dict[str, Any]:
        """What `_open` would make of the folder, less the entries whose files are gone.

        A pending journal is merged in memory as `_open` merges it; nothing is written or
        deleted (the deletions a committed save left are its writer's to do).
        """
        if not self.directory.is_dir():
            what = "a file" if self.directory.exists() else "missing"
            raise CheckpointError(f"{self.directory} is not a checkpoint folder ({what})")
        # The journal is read before the manifest. A live save that commits in between then
        # shows its new manifest; in the other order the old manifest could meet the new
        # files with the journal already gone, and `load` would see a sha256 mismatch.
        journal = read_journal(self.directory / JOURNAL_NAME)
        manifest_path = self.directory / MANIFEST_NAME
        manifest = (
            read_manifest(manifest_path)
            if manifest_path.exists()
            else empty_manifest(self.monitor, self.mode)
        )
        if journal is not None:
            manifest, _ = merge_journal(self.directory, manifest, journal)
        for name in list(manifest["checkpoints"]):
            if not self._path(name).is_file():
                logger.warning("%s is listed in the manifest but missing", self._path(name))
                del manifest["checkpoints"][name]
        if "best" not in manifest["checkpoints"]:
            manifest.update(best_metric=None, best_step=None)
        self.monitor = manifest.get("monitor", self.monitor)
        self.mode = manifest.get("mode", self.mode)
        return manifest

    def _open(self) -> dict[str, Any]:
        """Read the manifest, finish or roll back an interrupted save, remove stray temp files."""
        manifest_path = self.directory / MANIFEST_NAME
        journal_path = self.directory / JOURNAL_NAME
        manifest = (
            read_manifest(manifest_path)
            if manifest_path.exists()
            else empty_manifest(self.monitor, self.mode)
        )
        changed = False
        if journal_path.exists():
            manifest = recover(self.directory, manifest, journal_path)
            changed = True
        for temp in remove_temp_files(self.directory):
            logger.warning("removed %s, left by an interrupted write", temp)
        for name in list(manifest["checkpoints"]):
            if not self._path(name).is_file():
                logger.warning("%s is listed in the manifest but missing", self._path(name))
                del manifest["checkpoints"][name]
                changed = True
        if "best" not in manifest["checkpoints"]:
            manifest.update(best_metric=None, best_step=None)
        removed = rotate(manifest, self.keep_last)
        if changed or removed:
            atomic_write(manifest_path, json_writer(manifest))
            finish(self.directory, removed)
        if (manifest["monitor"], manifest["mode"]) != (self.monitor, self.mode):
            logger.warning(
                "%s tracked best by %s (%s); tracking restarts with %s (%s)",
                manifest_path,
                manifest["monitor"],
                manifest["mode"],
                self.monitor,
                self.mode,
            )
            manifest.update(best_metric=None, best_step=None)
        return manifest

    def _recover_after_failure(self) -> None:
        try:
            self._manifest = self._open()
        except (CheckpointError, OSError) as error:
            logger.warning("could not reread %s after a failed save: %s", self.directory, error)


def _entry_name(name: str) -> str:
    return name[: -len(".pt")] if name.endswith(".pt") else name


def _metric_values(metrics: Mapping[str, float] | None) -> dict[str, float]:
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise TypeError(f"CheckpointManager.save: metrics must be a mapping, got {metrics!r}")
    values = {}
    for key, value in metrics.items():
        try:
            values[str(key)] = float(value)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"CheckpointManager.save: metrics[{key!r}] must be a number, got {value!r}"
            ) from error
    return values

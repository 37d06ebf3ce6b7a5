"""The `Trainer`'s checkpoint methods: its state, saving, resuming and the fresh-start guard.

A mixin so that `loop.py` holds the loop alone; every method here is a `Trainer` method (see
docs/trainer.md), overridable in a subclass like any other.
"""

from __future__ import annotations

import logging as _pylogging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from transformer_kit._version import __version__
from transformer_kit.averaging import EMA
from transformer_kit.checkpoint import (
    CheckpointError,
    CheckpointManager,
    capture_rng_state,
    check_config,
    restore_rng_state,
)
from transformer_kit.data import RandomBatches
from transformer_kit.distributed import DistributedContext, broadcast_from_main
from transformer_kit.fsdp import load_sharded, save_sharded, sharded_folders
from transformer_kit.logging import MultiLogger
from transformer_kit.trainer.config import TrainerConfig

__all__ = ["CheckpointMixin"]

_log = _pylogging.getLogger("transformer_kit.trainer.loop")  # the Trainer's one logger name


class CheckpointMixin:
    """State, save, resume and fresh-start checks of a `Trainer` (which sets these attributes)."""

    config: TrainerConfig
    context: DistributedContext
    model: nn.Module
    optimizer: Optimizer
    scheduler: LRScheduler
    scaler: Any
    ema: EMA | None
    checkpoints: CheckpointManager | None
    batches: RandomBatches
    early_stopping: Any | None
    augment: Callable[..., Any] | None
    logger: MultiLogger
    step: int
    bad_steps: int
    rollbacks: int
    loss_mean: float | None
    _continues_in: Path | None
    _notify: Callable[..., None]

    def state_dict(self) -> dict[str, Any]:
        """Everything a run needs to continue bit for bit."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            **self._run_state(),
        }

    def _run_state(self) -> dict[str, Any]:
        # Everything but the model and optimizer (which FSDP checkpoints save as shards).
        return {
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.step,
            "epoch": self.batches.epoch,
            "data": self.batches.state_dict(),
            "rng": capture_rng_state(),
            "early_stopping": _state_or_none(self.early_stopping),
            "augment": _state_or_none(self.augment),
            "config": _model_config(self.model),
            "trainer_config": _plain(self.config.to_dict()),
            "trainer": {
                "bad_steps": self.bad_steps,
                "rollbacks": self.rollbacks,
                "loss_mean": self.loss_mean,
                "world_size": self.context.world_size,
            },
            "versions": {"library": __version__},
        }

    def load_state_dict(self, state: Mapping[str, Any], *, restore_data: bool = True) -> None:
        """Restore a state from `state_dict`; `restore_data=False` keeps the current data
        position and RNG (used by spike rollback, so the offending batches are skipped)."""
        self._check_model_config(state)
        saved_world = state.get("trainer", {}).get("world_size", 1)
        if restore_data and saved_world != self.context.world_size:
            raise CheckpointError(
                f"the checkpoint was written with world size {saved_world} but this run has "
                f"{self.context.world_size}; resume with the same number of processes"
            )
        if "model" in state:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            if state.get("ema"):
                self.ema.load_state_dict(state["ema"])
            else:  # a run that kept no average: start one from the restored weights
                _log.warning("the checkpoint holds no weight average; starting one at this step")
                self.ema.reset(self.model)
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self._mark_continues()
        trainer_state = state.get("trainer", {})
        self.bad_steps = int(trainer_state.get("bad_steps", 0))
        self.loss_mean = trainer_state.get("loss_mean")
        if not restore_data:
            return
        self.rollbacks = int(trainer_state.get("rollbacks", 0))
        self.batches.load_state_dict(state["data"])
        restore_rng_state(state["rng"])
        if self.early_stopping is not None and state.get("early_stopping") is not None:
            self.early_stopping.load_state_dict(state["early_stopping"])
        if self.augment is not None and state.get("augment") is not None:
            self.augment.load_state_dict(state["augment"])  # type: ignore[attr-defined]

    def _check_model_config(self, state: Mapping[str, Any]) -> None:
        model_config = _model_config(self.model)
        if state.get("config") is not None and model_config is not None:
            check_config(state["config"], model_config)

    def save_checkpoint(self, metrics: Mapping[str, float] | None = None) -> list[Any]:
        """Write `last` (and `best`/periodic ones as the manager decides) from rank 0.

        With fsdp every rank writes its shards into `<checkpoints>/sharded-last/`.
        """
        if self.checkpoints is None or not (self.context.is_main or self.config.fsdp):
            return []
        try:
            if self.config.fsdp:
                folder = self._sharded_folder()
                extra = self._run_state()
                paths = [save_sharded(folder, self.model, self.optimizer, extra=extra)]
            else:
                paths = self.checkpoints.save(self.state_dict(), step=self.step, metrics=metrics)
        except CheckpointError:
            if self.config.checkpoint_error == "raise":
                raise
            _log.exception("checkpoint at step %d failed; the previous one is intact", self.step)
            return []
        self._mark_continues()
        self._notify("on_checkpoint", paths)
        return paths

    def resume(self, *, strict: bool = True) -> bool:
        """Continue from the newest checkpoint that verifies; False when there is none.

        False means a fresh start, so it is returned only when the checkpoint folder holds no
        checkpoint file of either format: a run that would start beside or over checkpoints
        it cannot read is refused instead. The loggers are rewound as to the step resumed:
        to 0 on False, so records of a run that died before its first checkpoint go.

        Args:
            strict: refuse, with a `CheckpointError` naming each one, a checkpoint written
                under other `RESUME_FIXED` settings than this trainer's config (nothing is
                loaded then). False logs them as a warning and goes on: the checkpoint's lr,
                betas, weight decay (in the optimizer's state) and seed (in the data
                position's) are kept, and the other settings take this config's values.

        Raises:
            CheckpointError: the checkpoint belongs to another model or (with `strict`) to a
                run with other `RESUME_FIXED` settings; the folder holds only checkpoints of
                the other `fsdp` format (sharded against whole, which do not convert); or it
                holds checkpoints of this format and none of them loads.
        """
        if self.checkpoints is None:
            raise ValueError("Trainer.resume needs a CheckpointManager (pass checkpoints=...)")
        directory, folder = Path(self.checkpoints.directory), self._sharded_folder()
        if self.config.fsdp:
            name = "sharded-last"

            def check(extra: Mapping[str, Any]) -> None:  # before the shards load in place
                self._check_resume(extra, name, strict)

            try:
                state = load_sharded(folder, self.model, self.optimizer, check=check)
            except FileNotFoundError:
                whole, sharded = self._checkpoint_files()
                if sharded:
                    raise CheckpointError(
                        f"Trainer.resume: {directory} holds {', '.join(sharded)} but no "
                        "sharded checkpoint in it loads (its .metadata file is missing); move "
                        "it away to start a new run"
                    ) from None
                if whole:
                    raise CheckpointError(
                        f"Trainer.resume: fsdp=True reads the sharded checkpoint {folder}, but "
                        f"{directory} holds only whole-model checkpoints {whole}, written with "
                        "fsdp=False; resume with fsdp=False, or use another checkpoint folder "
                        "to start a new run"
                    ) from None
                self.logger.rewind(0)
                return False
        else:
            found = self.checkpoints.load_latest_good()
            if found is None:
                whole, sharded = self._checkpoint_files()
                if whole:
                    listed = self.checkpoints.manifest["checkpoints"]
                    why = (
                        "none of the listed ones verifies and loads (the warnings above say why)"
                        if any(self.checkpoints.exists(name) for name in listed)
                        else "its manifest.json lists none of them"
                    )
                    raise CheckpointError(
                        f"Trainer.resume: {directory} holds the checkpoints {whole}, but {why}; "
                        "starting fresh would overwrite them, so move them away to start a new run"
                    )
                if sharded:
                    raise CheckpointError(
                        f"Trainer.resume: fsdp=False reads whole-model checkpoints, but "
                        f"{directory} holds only the sharded {', '.join(sharded)}, written "
                        "with fsdp=True; resume with fsdp=True, or use another checkpoint "
                        "folder to start a new run"
                    )
                self.logger.rewind(0)
                return False
            name, state = found
            self._check_resume(state, name, strict)
        self.load_state_dict(state)
        self.logger.rewind(self.step)
        _log.info("resumed from %s at step %d", name, self.step)
        return True

    def check_fresh_start(self) -> None:
        """Refuse a new run into a checkpoint folder that already holds checkpoints.

        Such a run would write its `last` over the earlier run's and keep that run's `best`
        (the manifest remembers its best metric), so `restore_best` would load another run's
        weights. `fit()` calls this first; a script can call it before writing its own files.
        Nothing is checked once the trainer continues the run in that folder: after
        `resume()` found a checkpoint there, `load_state_dict()`, a checkpoint saved or an
        earlier `fit()`; nor without a `CheckpointManager`. Collective in a distributed run:
        rank 0 decides, so every rank raises or none does.

        Raises:
            CheckpointError: naming the folder and the checkpoints it holds.
        """
        problem = None
        checkpoints = self.checkpoints
        if (
            self.context.is_main
            and checkpoints is not None
            and self._folder() != self._continues_in
        ):
            whole, sharded = self._checkpoint_files()
            if whole or sharded:
                problem = (
                    f"Trainer.fit: {checkpoints.directory} already holds the checkpoints "
                    f"{[*whole, *sharded]} of an earlier run; resume that run (Trainer.resume, "
                    "--resume in the examples), or start this one in an empty checkpoint folder"
                )
        problem = broadcast_from_main(problem, self.context)
        if problem is not None:
            raise CheckpointError(problem)

    def _folder(self) -> Path | None:
        """The checkpoint folder, resolved; None without a `CheckpointManager`."""
        return None if self.checkpoints is None else Path(self.checkpoints.directory).resolve()

    def _mark_continues(self) -> None:
        self._continues_in = self._folder()

    def _checkpoint_files(self) -> tuple[list[str], list[str]]:
        """Names of the whole-model `*.pt` files and sharded folders in the checkpoint folder."""
        assert self.checkpoints is not None
        whole = sorted(path.name for path in Path(self.checkpoints.directory).glob("*.pt"))
        sharded = [f"{path.name}/" for path in sharded_folders(self._sharded_folder())]
        return whole, sharded

    def _check_resume(self, state: Mapping[str, Any], name: str, strict: bool) -> None:
        """Refuse (or with strict=False, report) a checkpoint of another model or run."""
        self._check_model_config(state)  # the model first: no other setting matters without it
        changes = self.config.resume_changes(state.get("trainer_config") or {})
        if not changes:
            return
        listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
        text = f"checkpoint {name!r} was written with other settings: {listed}"
        if strict:
            raise CheckpointError(
                f"Trainer.resume: {text}; resume with the run's own settings, or pass "
                "strict=False to go on with these (the checkpoint's lr, betas, weight decay "
                "and seed are kept)"
            )
        _log.warning("%s; going on with this config (strict=False)", text)

    def _sharded_folder(self) -> Path:
        assert self.checkpoints is not None
        return Path(self.checkpoints.directory) / "sharded-last"


def _model_config(model: nn.Module) -> dict[str, Any] | None:
    """The model's config as a plain dict, when it has one (the kit's GPT does)."""
    to_dict = getattr(getattr(model, "config", None), "to_dict", None)
    return to_dict() if callable(to_dict) else None


def _state_or_none(part: object) -> dict[str, Any] | None:
    state_dict = getattr(part, "state_dict", None)
    return state_dict() if state_dict is not None else None


def _plain(value: Any) -> Any:
    # Checkpoints load with weights_only=True, which refuses tuples of arbitrary objects less
    # often than custom classes; keep configs as plain JSON-like values.
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value

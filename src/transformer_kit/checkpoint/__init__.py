"""Checkpoints: atomic saves, exact resume, best/last/periodic rotation, safetensors export.

A file under a final name is always complete: every write goes to a temporary file that is
fsynced and renamed. Loading uses ``weights_only=True``; exports are safetensors + JSON.
    >>> import tempfile
    >>> len(save_checkpoint(f"{tempfile.mkdtemp()}/last.pt", {"step": 3}))
    64
"""

from __future__ import annotations

from transformer_kit.checkpoint._atomic import CheckpointError
from transformer_kit.checkpoint._export import export_weights, load_weights
from transformer_kit.checkpoint._folder import check_run_folder
from transformer_kit.checkpoint._manager import CheckpointManager
from transformer_kit.checkpoint._rng import capture_rng_state, restore_rng_state
from transformer_kit.checkpoint._state import (
    FORMAT_VERSION,
    Stateful,
    check_config,
    load_checkpoint,
    save_checkpoint,
)

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointManager",
    "Stateful",
    "capture_rng_state",
    "check_config",
    "check_run_folder",
    "export_weights",
    "load_checkpoint",
    "load_weights",
    "restore_rng_state",
    "save_checkpoint",
]

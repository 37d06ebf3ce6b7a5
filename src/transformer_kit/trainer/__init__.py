"""A thin training loop that composes the kit's parts: data, optimizer, schedule, checkpoints.

The Trainer is the only module that knows the others. Everything it uses is passed in or built
by a small overridable method (`configure_optimizer`, `configure_scheduler`, `training_step`,
`evaluation_step`), so a subclass changes one piece without copying the loop.
    >>> config = TrainerConfig(max_steps=100, batch_size=8)
    >>> config.tokens_per_step(block_size=64)
    512
"""

from __future__ import annotations

from transformer_kit.trainer.config import RESUME_FIXED, TrainerConfig
from transformer_kit.trainer.loop import Batch, Trainer, TrainingError

__all__ = ["RESUME_FIXED", "Batch", "Trainer", "TrainerConfig", "TrainingError"]

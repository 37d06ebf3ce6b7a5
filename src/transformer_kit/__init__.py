"""transformer-kit: train transformer models from scratch with the practices that work.

The modules are the public homes (`from transformer_kit import sampling, schedules`); the
handful of names most scripts need are also here.
"""

from __future__ import annotations

from transformer_kit._version import __version__
from transformer_kit.checkpoint import CheckpointManager
from transformer_kit.data import TokenDataset
from transformer_kit.models import GPT, GPTConfig
from transformer_kit.sampling import generate
from transformer_kit.tokenization import CharTokenizer, Vocabulary
from transformer_kit.trainer import Trainer, TrainerConfig

__all__ = [
    "GPT",
    "CharTokenizer",
    "CheckpointManager",
    "GPTConfig",
    "TokenDataset",
    "Trainer",
    "TrainerConfig",
    "Vocabulary",
    "__version__",
    "generate",
]

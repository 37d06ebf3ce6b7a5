"""Token-batch augmentation: small transforms and an epoch-aware, exactly resumable schedule.

A batch is a pair ``(inputs, targets)`` of integer tensors of shape (B, T). Transforms follow the
`Augmentation` protocol; `StagedAugmentation` picks one per epoch and applies it to random rows.
Any token batch takes `RandomTokenMask` and `RandomCrop`; music batches (`MusicTokenizer` ids)
also `PitchShift` and `RhythmScale`; `Compose`, `Stage`, `StagedAugmentation` and `three_stage`
combine them.
    >>> aug = three_stage(RandomTokenMask(0.1, mask_id=1), RandomTokenMask(0.3, mask_id=1))
    >>> [aug.stage_at(epoch).p for epoch in (0, 10, 30)]
    [0.0, 0.5, 0.8]
"""

from __future__ import annotations

from transformer_kit.augment._base import Augmentation
from transformer_kit.augment._music import PitchShift, RhythmScale
from transformer_kit.augment._schedule import Compose, Stage, StagedAugmentation, three_stage
from transformer_kit.augment._tokens import RandomCrop, RandomTokenMask

__all__ = [
    "Augmentation",
    "Compose",
    "PitchShift",
    "RandomCrop",
    "RandomTokenMask",
    "RhythmScale",
    "Stage",
    "StagedAugmentation",
    "three_stage",
]

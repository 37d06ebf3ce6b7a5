"""Composing transforms, and the epoch-aware schedule that applies them to random rows."""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from transformer_kit.augment._base import Augmentation, _check_batch, _check_probability

__all__ = ["Compose", "Stage", "StagedAugmentation", "three_stage"]


@dataclass(frozen=True, slots=True)
class Compose:
    """Apply several augmentations in order, sharing one generator.

    Example:
        >>> crop_then_mask = Compose([RandomCrop(4), RandomTokenMask(0.1, mask_id=1)])
    """

    transforms: Sequence[Augmentation]

    def __post_init__(self) -> None:
        if not isinstance(self.transforms, Sequence) or isinstance(self.transforms, str):
            raise TypeError(
                f"Compose: transforms must be a sequence of callables, got {self.transforms!r}"
            )
        for transform in self.transforms:
            if not callable(transform):
                raise TypeError(
                    f"Compose: transforms must be callables (Augmentation), got {transform!r}"
                )
        object.__setattr__(self, "transforms", tuple(self.transforms))

    def __call__(
        self, inputs: Tensor, targets: Tensor, *, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Return the batch after every transform; an empty Compose returns copies."""
        _check_batch("Compose", inputs, targets)
        if not self.transforms:
            return inputs.clone(), targets.clone()
        for transform in self.transforms:
            inputs, targets = transform(inputs, targets, generator=generator)
        return inputs, targets


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage of a schedule: from ``start_epoch`` on, apply ``transform`` to rows with prob. p.

    ``transform=None`` or ``p=0`` means no augmentation during the stage.
    """

    start_epoch: int
    transform: Augmentation | None
    p: float

    def __post_init__(self) -> None:
        if (
            isinstance(self.start_epoch, bool)
            or not isinstance(self.start_epoch, int)
            or self.start_epoch < 0
        ):
            raise ValueError(f"Stage: start_epoch must be an int >= 0, got {self.start_epoch!r}")
        if self.transform is not None and not callable(self.transform):
            raise TypeError(
                f"Stage: transform must be an Augmentation or None, got {self.transform!r}"
            )
        _check_probability("Stage", self.p)


class StagedAugmentation:
    """Epoch-aware augmentation: the stage in force picks the transform and the row probability.

    At ``epoch`` the stage in force is the last one whose ``start_epoch <= epoch``. Each row of
    the batch is chosen independently with the stage's probability p; the stage's transform is
    applied to the chosen rows only (as one sub-batch), and the other rows are returned unchanged.

    All randomness comes from an internal CPU `torch.Generator` seeded with ``seed``: one uniform
    draw per row for the choice, then whatever the transform draws for the chosen rows. A stage
    with ``transform=None`` or ``p=0`` draws nothing, so adding or removing such stages (or
    lengthening them) does not shift the random stream of later calls. `state_dict` holds the
    generator state, so a resumed run continues with the identical stream.

    Example:
        >>> aug = StagedAugmentation([Stage(0, None, 0.0), Stage(5, RandomCrop(2), 0.5)], seed=1)
        >>> inputs, targets = aug(torch.ones(4, 8, dtype=torch.long),
        ...     torch.ones(4, 8, dtype=torch.long), epoch=7)
        >>> inputs.shape
        torch.Size([4, 8])
    """

    def __init__(self, stages: Sequence[Stage], *, seed: int = 0) -> None:
        stages = tuple(stages)
        if not stages:
            raise ValueError("StagedAugmentation: stages must be non-empty, got ()")
        for stage in stages:
            if not isinstance(stage, Stage):
                raise TypeError(
                    f"StagedAugmentation: stages must hold Stage objects, got {stage!r}"
                )
        starts = [stage.start_epoch for stage in stages]
        if starts[0] != 0:
            raise ValueError(
                f"StagedAugmentation: the first stage must start at epoch 0, got start epochs "
                f"{starts}"
            )
        if any(later <= earlier for earlier, later in zip(starts, starts[1:], strict=False)):
            raise ValueError(
                f"StagedAugmentation: stage start epochs must be strictly increasing, got {starts}"
            )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"StagedAugmentation: seed must be an int, got {seed!r}")
        self.stages = stages
        self.seed = seed
        self.calls = 0
        """Number of batches seen, augmented or not."""
        self._starts = starts
        self._generator = torch.Generator().manual_seed(seed)

    def stage_at(self, epoch: int) -> Stage:
        """Return the stage in force at ``epoch`` (0-based)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"StagedAugmentation: epoch must be an int >= 0, got {epoch!r}")
        return self.stages[bisect.bisect_right(self._starts, epoch) - 1]

    def __call__(self, inputs: Tensor, targets: Tensor, *, epoch: int) -> tuple[Tensor, Tensor]:
        """Return the batch augmented for ``epoch``, as new tensors; the arguments are untouched."""
        _check_batch("StagedAugmentation", inputs, targets)
        stage = self.stage_at(epoch)
        self.calls += 1
        inputs, targets = inputs.clone(), targets.clone()
        if stage.transform is None or stage.p == 0.0:
            return inputs, targets
        draws = torch.rand(inputs.shape[0], generator=self._generator)
        chosen = (draws < stage.p).to(inputs.device)  # (B,)
        if not bool(chosen.any()):
            return inputs, targets
        sub_inputs, sub_targets = stage.transform(
            inputs[chosen], targets[chosen], generator=self._generator
        )
        expected = (int(chosen.sum()), inputs.shape[1])
        if tuple(sub_inputs.shape) != expected or tuple(sub_targets.shape) != expected:
            raise ValueError(
                f"StagedAugmentation: transform {stage.transform!r} must keep the batch shape "
                f"{expected}, got {tuple(sub_inputs.shape)} and {tuple(sub_targets.shape)}"
            )
        inputs[chosen] = sub_inputs.to(inputs.dtype)
        targets[chosen] = sub_targets.to(targets.dtype)
        return inputs, targets

    def state_dict(self) -> dict[str, Any]:
        """Return the seed, the generator state and the call count."""
        return {"seed": self.seed, "generator": self._generator.get_state(), "calls": self.calls}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state saved by `state_dict`; the saved seed replaces the constructor's."""
        self._generator.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8).cpu())
        self.seed = int(state["seed"])
        self.calls = int(state["calls"])

    def __repr__(self) -> str:
        return f"StagedAugmentation({list(self.stages)!r}, seed={self.seed!r})"


def three_stage(
    light: Augmentation,
    heavy: Augmentation,
    *,
    light_from: int = 10,
    heavy_from: int = 30,
    light_p: float = 0.5,
    heavy_p: float = 0.8,
    seed: int = 0,
) -> StagedAugmentation:
    """Build the seed document's schedule: none, then ``light``, then ``heavy``.

    With the defaults: epochs 0-9 unaugmented (learn the base patterns first), epochs 10-29
    ``light`` on half of the rows, epochs 30 on ``heavy`` on 80% of the rows.
    """
    if isinstance(light_from, bool) or not isinstance(light_from, int) or light_from < 1:
        raise ValueError(f"three_stage: light_from must be an int >= 1, got {light_from!r}")
    if isinstance(heavy_from, bool) or not isinstance(heavy_from, int) or heavy_from <= light_from:
        raise ValueError(
            f"three_stage: heavy_from must be an int > light_from ({light_from}), "
            f"got {heavy_from!r}"
        )
    stages = [
        Stage(0, None, 0.0),
        Stage(light_from, light, light_p),
        Stage(heavy_from, heavy, heavy_p),
    ]
    return StagedAugmentation(stages, seed=seed)

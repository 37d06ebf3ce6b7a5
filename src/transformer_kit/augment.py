"""Token-batch augmentation: small transforms and an epoch-aware, exactly resumable schedule.

A batch is a pair ``(inputs, targets)`` of integer tensors of shape (B, T). Transforms follow the
`Augmentation` protocol; `StagedAugmentation` picks one per epoch and applies it to random rows.
    >>> aug = three_stage(RandomTokenMask(0.1, mask_id=1), RandomTokenMask(0.3, mask_id=1))
    >>> [aug.stage_at(epoch).p for epoch in (0, 10, 30)]
    [0.0, 0.5, 0.8]
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:
    from transformer_kit.tokenization import MusicTokenizer

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

# Shapes: B batch rows, T time steps (tokens per row).


class Augmentation(Protocol):
    """A transform of one batch.

    It returns new tensors of the same shape, never mutates its arguments and draws all of its
    randomness from ``generator``.
    """

    def __call__(
        self, inputs: Tensor, targets: Tensor, *, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Return the augmented ``(inputs, targets)``, each (B, T)."""
        ...


@dataclass(frozen=True, slots=True)
class RandomTokenMask:
    """Replace each input token with ``mask_id`` with probability ``p``.

    Targets are never changed, so the model learns to predict the true next token from a
    corrupted context. Tokens whose id is in ``protected_ids`` (padding, separators) are never
    masked.

    Example:
        >>> mask = RandomTokenMask(1.0, mask_id=9, protected_ids=(0,))
        >>> mask(torch.tensor([[0, 5, 6]]), torch.tensor([[5, 6, 7]]), generator=torch.Generator())
        (tensor([[0, 9, 9]]), tensor([[5, 6, 7]]))
    """

    p: float
    _: KW_ONLY
    mask_id: int
    protected_ids: Sequence[int] = ()

    def __post_init__(self) -> None:
        _check_probability("RandomTokenMask", self.p)
        _check_id("RandomTokenMask", "mask_id", self.mask_id)
        for token in self.protected_ids:
            _check_id("RandomTokenMask", "protected_ids entries", token)
        object.__setattr__(self, "protected_ids", tuple(self.protected_ids))

    def __call__(
        self, inputs: Tensor, targets: Tensor, *, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Return the masked inputs and a copy of the targets."""
        _check_batch("RandomTokenMask", inputs, targets)
        draws = torch.rand(inputs.shape, generator=generator, device=generator.device)
        masked = draws.to(inputs.device) < self.p  # (B, T)
        if self.protected_ids:
            protected = torch.tensor(self.protected_ids, dtype=inputs.dtype, device=inputs.device)
            masked &= ~torch.isin(inputs, protected)
        return inputs.masked_fill(masked, self.mask_id), targets.clone()


@dataclass(frozen=True, slots=True)
class RandomCrop:
    """Keep a random-length prefix of each row and pad the rest of inputs and targets.

    Each row keeps its first L tokens, with L drawn uniformly from [min_length, T] independently
    per row; positions from L on become ``pad_id`` in the inputs and ``target_pad_id`` in the
    targets. The loss must ignore ``target_pad_id`` (e.g. ``cross_entropy(...,
    ignore_index=target_pad_id)``), or the model is trained to predict padding.

    Args:
        min_length: Shortest kept prefix, >= 1.
        pad_id: Id written into the cropped input positions.
        target_pad_id: Id written into the cropped target positions; defaults to ``pad_id``.
            Use -100 for PyTorch's default ``ignore_index``.

    Example:
        >>> crop = RandomCrop(2, pad_id=0, target_pad_id=-100)
        >>> ids = torch.tensor([[5, 6, 7, 8]])
        >>> inputs, targets = crop(ids, ids + 1, generator=torch.Generator().manual_seed(2))
        >>> inputs.tolist(), targets.tolist()
        ([[5, 6, 0, 0]], [[6, 7, -100, -100]])
    """

    min_length: int
    _: KW_ONLY
    pad_id: int = 0
    target_pad_id: int | None = None

    def __post_init__(self) -> None:
        if (
            isinstance(self.min_length, bool)
            or not isinstance(self.min_length, int)
            or self.min_length < 1
        ):
            raise ValueError(f"RandomCrop: min_length must be an int >= 1, got {self.min_length!r}")
        _check_id("RandomCrop", "pad_id", self.pad_id)
        if self.target_pad_id is not None and (
            isinstance(self.target_pad_id, bool) or not isinstance(self.target_pad_id, int)
        ):
            raise ValueError(
                f"RandomCrop: target_pad_id must be an int or None, got {self.target_pad_id!r}"
            )

    def __call__(
        self, inputs: Tensor, targets: Tensor, *, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Return the cropped-and-padded inputs and targets."""
        _check_batch("RandomCrop", inputs, targets)
        rows, length = inputs.shape
        if length < self.min_length:
            raise ValueError(
                f"RandomCrop: sequence length T={length} is shorter than "
                f"min_length={self.min_length}"
            )
        kept = torch.randint(
            self.min_length, length + 1, (rows,), generator=generator, device=generator.device
        ).to(inputs.device)  # (B,)
        cropped = torch.arange(length, device=inputs.device) >= kept[:, None]  # (B, T)
        target_pad = self.pad_id if self.target_pad_id is None else self.target_pad_id
        return inputs.masked_fill(cropped, self.pad_id), targets.masked_fill(cropped, target_pad)


@dataclass(frozen=True, slots=True)
class PitchShift:
    """Transpose each row by one random number of semitones: every NOTE id moves by k.

    Per row, k is drawn uniformly from ``semitones`` and added to every id in ``note_ids`` of the
    inputs and of the targets (the same k for both, as the targets are the inputs one step on).
    A row where some NOTE would leave ``note_ids`` is returned unchanged, so no pitch is ever
    clipped or wrapped. NOTE ids must be chromatic, one semitone apart (`MusicTokenizer.note_ids`).

    Example:
        >>> shift = PitchShift([2], note_ids=range(5, 55))  # row 2 would leave the range
        >>> ids = torch.tensor([[1, 10, 60, 52], [1, 10, 60, 53]])
        >>> shift(ids[:, :-1], ids[:, 1:], generator=torch.Generator())
        (tensor([[ 1, 12, 60],
                [ 1, 10, 60]]), tensor([[12, 60, 54],
                [10, 60, 53]]))
    """

    semitones: Sequence[int]
    _: KW_ONLY
    note_ids: range

    def __post_init__(self) -> None:
        if isinstance(self.semitones, str | bytes) or not isinstance(self.semitones, Sequence):
            raise ValueError(
                f"PitchShift: semitones must be a non-empty sequence of ints, got "
                f"{self.semitones!r}"
            )
        semitones = tuple(self.semitones)
        if not semitones or any(isinstance(k, bool) or not isinstance(k, int) for k in semitones):
            raise ValueError(
                f"PitchShift: semitones must be a non-empty sequence of ints, got {semitones!r}"
            )
        ids = self.note_ids
        if not isinstance(ids, range) or ids.step != 1 or not ids or ids.start < 0:
            raise ValueError(
                f"PitchShift: note_ids must be a non-empty range of ids >= 0 with step 1 "
                f"(MusicTokenizer.note_ids), got {ids!r}"
            )
        object.__setattr__(self, "semitones", semitones)

    def __call__(
        self, inputs: Tensor, targets: Tensor, *, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Return the transposed inputs and targets."""
        _check_batch("PitchShift", inputs, targets)
        pick = torch.randint(
            len(self.semitones), (inputs.shape[0],), generator=generator, device=generator.device
        ).to(inputs.device)  # (B,)
        shift = torch.tensor(self.semitones, dtype=inputs.dtype, device=inputs.device)[pick]
        low, high = self.note_ids.start, self.note_ids.stop
        fits = torch.ones_like(shift, dtype=torch.bool)  # (B,)
        for ids in (inputs, targets):
            is_note = (ids >= low) & (ids < high)  # (B, T)
            moved = ids + shift[:, None]
            fits &= (~is_note | ((moved >= low) & (moved < high))).all(dim=1)
        shift = torch.where(fits, shift, torch.zeros_like(shift))[:, None]  # (B, 1)
        new_inputs, new_targets = (
            torch.where((ids >= low) & (ids < high), ids + shift.to(ids.dtype), ids)
            for ids in (inputs, targets)
        )
        return new_inputs, new_targets


@dataclass(frozen=True, slots=True)
class RhythmScale:
    """Augmentation or diminution: scale every DUR and TIME value of a row by one drawn factor.

    Per row, a factor is drawn uniformly from ``factors``; every id of ``durations`` becomes the
    DUR id whose value is factor x its value, and every id of ``times`` the TIME id likewise, in
    inputs and targets alike. A row where some value would fall off the grid (no token for it)
    is returned unchanged. Everything else (notes, voices, bar lines) is untouched, so the
    rhythm stays exact: a bar of 4/4 halves into a bar of 2/4. Build one for a tokenizer with
    `RhythmScale.for_tokenizer`.

    Args:
        factors: Scale factors, each > 0 (0.5 halves every length, 2.0 doubles it).
        durations: DUR id -> its length in quarter notes.
        times: TIME id -> its time advance in quarter notes.

    Example:
        >>> scale = RhythmScale([2.0], durations={5: 0.5, 6: 1.0}, times={7: 0.5, 8: 1.0})
        >>> scale(torch.tensor([[1, 5, 7]]), torch.tensor([[5, 7, 2]]),
        ...       generator=torch.Generator())
        (tensor([[1, 6, 8]]), tensor([[6, 8, 2]]))
    """

    factors: Sequence[float] = (0.5, 2.0)
    _: KW_ONLY
    durations: Mapping[int, float]
    times: Mapping[int, float]
    _table: Tensor = field(init=False, repr=False, compare=False)
    """(F, L) int64: for factor f and id i < L, the scaled id, or -1 off the grid."""

    def __post_init__(self) -> None:
        if isinstance(self.factors, str | bytes) or not isinstance(self.factors, Sequence):
            raise ValueError(
                f"RhythmScale: factors must be a non-empty sequence of numbers > 0, got "
                f"{self.factors!r}"
            )
        factors = tuple(self.factors)
        if not factors or not all(_is_finite(f) and f > 0 for f in factors):
            raise ValueError(
                f"RhythmScale: factors must be a non-empty sequence of numbers > 0, got {factors!r}"
            )
        groups = []
        for name in ("durations", "times"):
            group = getattr(self, name)
            if (
                not isinstance(group, Mapping)
                or not group
                or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in group)
                or not all(_is_finite(v) and v >= 0 for v in group.values())
            ):
                raise ValueError(
                    f"RhythmScale: {name} must be a non-empty mapping of ids >= 0 to numbers "
                    f">= 0, got {group!r}"
                )
            groups.append({i: float(v) for i, v in group.items()})
        shared = groups[0].keys() & groups[1].keys()
        if shared:
            raise ValueError(
                f"RhythmScale: an id cannot be both a DUR and a TIME id, got {sorted(shared)}"
            )
        size = 1 + max(*groups[0], *groups[1])
        table = torch.arange(size).repeat(len(factors), 1)  # (F, L): identity by default
        for row, factor in enumerate(factors):
            for group in groups:
                for i, value in group.items():
                    table[row, i] = _scaled_id(group, value * factor)
        object.__setattr__(self, "factors", factors)
        object.__setattr__(self, "durations", groups[0])
        object.__setattr__(self, "times", groups[1])
        object.__setattr__(self, "_table", table)

    @classmethod
    def for_tokenizer(
        cls, tokenizer: MusicTokenizer, factors: Sequence[float] = (0.5, 2.0)
    ) -> RhythmScale:
        """Build the transform for the DUR and TIME tokens of a `MusicTokenizer`."""
        return cls(
            factors,
            durations=dict(zip(tokenizer.dur_ids, tokenizer.durations, strict=True)),
            times=dict(zip(tokenizer.time_ids, tokenizer.time_steps, strict=True)),
        )

    def __call__(
        self, inputs: Tensor, targets: Tensor, *, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Return the rescaled inputs and targets."""
        _check_batch("RhythmScale", inputs, targets)
        pick = torch.randint(
            len(self.factors), (inputs.shape[0],), generator=generator, device=generator.device
        ).to(inputs.device)  # (B,)
        table = self._table.to(inputs.device)
        size = table.shape[1]
        fits = torch.ones_like(pick, dtype=torch.bool)  # (B,)
        scaled = []
        for ids in (inputs, targets):
            inside = (ids >= 0) & (ids < size)  # (B, T); e.g. -100 padding is outside
            looked_up = table[pick[:, None], ids.clamp(0, size - 1)]  # (B, T)
            fits &= ~(inside & (looked_up < 0)).any(dim=1)
            scaled.append(torch.where(inside, looked_up.to(ids.dtype), ids))
        new_inputs, new_targets = (
            torch.where(fits[:, None], new, ids)
            for new, ids in zip(scaled, (inputs, targets), strict=True)
        )
        return new_inputs, new_targets


@dataclass(frozen=True, slots=True)
class Compose:
    """Apply several augmentations in order, sharing one generator.

    Example:
        >>> crop_then_mask = Compose([RandomCrop(4), RandomTokenMask(0.1, mask_id=1)])
    """

    transforms: Sequence[Augmentation]

    def __post_init__(self) -> None:
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


def _is_finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _scaled_id(group: Mapping[int, float], value: float) -> int:
    """The id in `group` whose value is `value` (to 1e-9), else -1."""
    for i, candidate in group.items():
        if abs(candidate - value) <= 1e-9 * max(1.0, abs(value)):
            return i
    return -1


def _check_probability(owner: str, p: float) -> None:
    # The chained comparison is False for NaN, so NaN is refused too.
    if isinstance(p, bool) or not isinstance(p, int | float) or not (0.0 <= p <= 1.0):
        raise ValueError(f"{owner}: p must be a number in [0, 1], got {p!r}")


def _check_id(owner: str, name: str, token: int) -> None:
    if isinstance(token, bool) or not isinstance(token, int) or token < 0:
        raise ValueError(f"{owner}: {name} must be an int >= 0, got {token!r}")


def _check_batch(owner: str, inputs: Tensor, targets: Tensor) -> None:
    for name, tensor in (("inputs", inputs), ("targets", targets)):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{owner}: {name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 2 or tensor.is_floating_point() or tensor.is_complex():
            raise ValueError(
                f"{owner}: {name} must be a 2-D integer tensor (B, T), got shape "
                f"{tuple(tensor.shape)} and dtype {tensor.dtype}"
            )
        if tensor.dtype == torch.bool:
            raise ValueError(f"{owner}: {name} must be an integer tensor, got dtype torch.bool")
    if inputs.shape != targets.shape:
        raise ValueError(
            f"{owner}: inputs and targets must have the same shape, got {tuple(inputs.shape)} "
            f"and {tuple(targets.shape)}"
        )

"""Transforms of music token batches: pitch shifts and exact rhythm scaling."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from transformer_kit.augment._base import _check_batch, _is_finite

if TYPE_CHECKING:
    from transformer_kit.tokenization import MusicTokenizer


__all__ = ["PitchShift", "RhythmScale"]

_KEYS = 12  # KEY tokens: key signatures -6..5 sharps, as MusicTokenizer(key_tokens=True) has
_SHARPS_PER_SEMITONE = 7  # a semitone up is 7 fifths up, each fifth one more sharp


@dataclass(frozen=True, slots=True)
class PitchShift:
    """Transpose each row by one random number of semitones: every NOTE id moves by k.

    Per row, k is drawn uniformly from ``semitones`` and added to every id in ``note_ids`` of the
    inputs and of the targets (the same k for both, as the targets are the inputs one step on).
    A row where some NOTE would leave ``note_ids`` is returned unchanged, so no pitch is ever
    clipped or wrapped. NOTE ids must be chromatic, one semitone apart (`MusicTokenizer.note_ids`).

    With ``key_ids`` (`MusicTokenizer.key_ids` of a tokenizer with `key_tokens`: 12 ids,
    ``<KEY:-6>`` first) the key signature moves too: k semitones up add 7k sharps, modulo 12
    (the KEY tokens' enharmonic spelling), so ``<KEY:0>`` (C) up 1 is ``<KEY:-5>`` (Db). A row
    that is left unchanged keeps its key.

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
    key_ids: range = range(0)

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
        keys = self.key_ids
        twelve = isinstance(keys, range) and keys.step == 1 and len(keys) == _KEYS
        if not (isinstance(keys, range) and (not keys or (twelve and keys.start >= 0))):
            raise ValueError(
                f"PitchShift: key_ids must be an empty range or a range of {_KEYS} ids >= 0 with "
                f"step 1 (MusicTokenizer.key_ids), got {keys!r}"
            )
        if keys and (keys.start < ids.stop and ids.start < keys.stop):
            raise ValueError(f"PitchShift: key_ids {keys!r} must not overlap note_ids {ids!r}")
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
            self._move(ids, shift.to(ids.dtype)) for ids in (inputs, targets)
        )
        return new_inputs, new_targets

    def _move(self, ids: Tensor, shift: Tensor) -> Tensor:
        """Move the NOTE ids of ``ids`` (B, T) by ``shift`` (B, 1) semitones, the KEY ids along."""
        low, high = self.note_ids.start, self.note_ids.stop
        moved = torch.where((ids >= low) & (ids < high), ids + shift, ids)
        if not self.key_ids:
            return moved
        first = self.key_ids.start
        is_key = (ids >= first) & (ids < self.key_ids.stop)  # (B, T)
        # Sharps count modulo 12 (12 fifths are 7 octaves), as the KEY tokens spell them.
        key = first + torch.remainder(ids - first + _SHARPS_PER_SEMITONE * shift, _KEYS)
        return torch.where(is_key, key, moved)


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


def _scaled_id(group: Mapping[int, float], value: float) -> int:
    """The id in `group` whose value is `value` (to 1e-9), else -1."""
    for i, candidate in group.items():
        if abs(candidate - value) <= 1e-9 * max(1.0, abs(value)):
            return i
    return -1

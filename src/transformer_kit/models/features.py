"""Domain position features for `GPT(config, position_features=...)`: bar position, busy voices.

Music tokens carry time as deltas (a TIME token advances the clock), so where a note falls in
its bar is the sum of the time steps since the last bar line, and whether a voice is still
holding a note depends on every onset and duration before: the model cannot read either off one
token. `BarPositionFeatures` computes the first, `VoiceStateFeatures` the second, each adds a
learned embedding of it, and `FeatureSum` adds several such modules together.
    >>> features = BarPositionFeatures(8, time_values=[0.0, 0.0, 0.5], bar_id=1)
    >>> features.bar_positions(torch.tensor([[1, 2, 2, 1, 2]])).tolist()
    [[0, 0, 2, 0, 0]]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["BarPositionFeatures", "FeatureSum", "VoiceStateFeatures"]

# Shapes: B batch rows, S tokens of history, T new tokens (the last T of the history), C width.


class BarPositionFeatures(nn.Module):
    """A learned embedding of each token's position within its bar, in grid steps.

    A token's bar position is the time advanced by the tokens before it since the last reset
    token (a bar line, and optionally the start-of-piece token), counted in steps of
    ``resolution`` quarter lengths and clamped to ``max_steps``. Before the first reset token of
    the history (a training window that starts mid-bar, or a sliding generation window) the
    position is unknown and gets its own embedding row, so the model is never told a wrong one.

    With a KV cache, `GPT` hands this module the history held in the cache (``uses_history``),
    so cached decoding gives exactly the features of a full recompute of the same window (a
    rolling cache holds only its window of recent tokens, as a training window does).

    Args:
        d_model: width of the features; the model's `d_model`.
        time_values: per vocabulary id, the time the token advances the clock, in quarter
            lengths (`MusicTokenizer.time_values()`); 0 for tokens that do not.
        bar_id: the bar-line token, which resets the position to 0.
        start_id: an optional start-of-piece token that also resets the position.
        resolution: quarter lengths per step (0.25: sixteenth notes).
        max_steps: positions beyond it share its row (16 steps of 0.25 = one 4/4 bar).
    """

    uses_history = True
    """`GPT` passes the whole token history (see the `position_features` argument of GPT)."""

    def __init__(
        self,
        d_model: int,
        *,
        time_values: Sequence[float],
        bar_id: int,
        start_id: int | None = None,
        resolution: float = 0.25,
        max_steps: int = 16,
    ) -> None:
        super().__init__()
        where = "BarPositionFeatures"
        _check_positive_int(where, "d_model", d_model)
        values = _per_id_values(where, "time_values", time_values)
        _check_id(where, "bar_id", bar_id, len(values))
        if start_id is not None:
            _check_id(where, "start_id", start_id, len(values))
        _check_resolution(where, resolution)
        _check_positive_int(where, "max_steps", max_steps)
        self.bar_id = bar_id
        self.start_id = start_id
        self.resolution = float(resolution)
        self.max_steps = max_steps
        self.unknown = max_steps + 1
        """Embedding row of the unknown position (before the first reset token)."""
        self.steps: Tensor
        steps = torch.tensor([round(v / resolution) for v in values], dtype=torch.long)
        self.register_buffer("steps", steps, persistent=False)  # (V,) grid steps per id
        self.embedding = nn.Embedding(max_steps + 2, d_model)

    def bar_positions(self, ids: Tensor) -> Tensor:
        """Each token's position within its bar in steps, or `unknown`; (B, S) int64."""
        steps = self.steps[ids]  # (B, S)
        before = steps.cumsum(dim=1) - steps  # time advanced before each token
        is_reset = ids == self.bar_id
        if self.start_id is not None:
            is_reset = is_reset | (ids == self.start_id)
        # The clock reading at the last reset at or before each token; -1 when there is none.
        marks = torch.where(is_reset, before, torch.full_like(before, -1))
        last_reset = marks.cummax(dim=1).values  # (B, S)
        position = (before - last_reset).clamp(max=self.max_steps)
        return torch.where(last_reset >= 0, position, torch.full_like(position, self.unknown))

    def forward(self, ids: Tensor, positions: Tensor) -> Tensor:
        """Features of the last T tokens of the history ``ids`` (B, S); T from ``positions``."""
        new = positions.shape[-1]
        return self.embedding(self.bar_positions(ids)[:, -new:])  # (B, T, C)

    def extra_repr(self) -> str:
        return (
            f"bar_id={self.bar_id}, start_id={self.start_id}, resolution={self.resolution}, "
            f"max_steps={self.max_steps}"
        )


class VoiceStateFeatures(nn.Module):
    """A learned embedding of how long each voice keeps sounding after each token, in grid steps.

    For every voice the feature is the time from the current clock (after the token's own time
    step) to the end of that voice's latest note, clamped to ``[0, max_steps]``: 0 means the
    voice is free. Notes are read from their `<VOICE>` and `<DUR>` tokens (a note's onset is the
    clock at its `<DUR>`, as in `MusicTokenizer`'s stream), so the voice state is known from the
    note's duration token on. A start-of-piece token sets every voice free. Until a voice's
    first note (or a start token) in the history, its state is unknown and gets its own row.
    Each voice has its own table; the embeddings of all voices are summed.

    With a KV cache, `GPT` hands this module the history held in the cache (``uses_history``),
    so cached decoding gives exactly the features of a full recompute of the same window (a
    rolling cache holds only its window of recent tokens, as a training window does).

    Args:
        d_model: width of the features; the model's `d_model`.
        time_values: per vocabulary id, the time the token advances the clock, in quarter
            lengths (`MusicTokenizer.time_values()`).
        duration_values: per vocabulary id, the duration a DUR token gives its note, in quarter
            lengths (`MusicTokenizer.duration_values()`); 0 for other tokens.
        voice_ids: the id of each voice's token, in voice order (`MusicTokenizer.voice_ids`).
        start_id: the start-of-piece token, which sets every voice free.
        resolution: quarter lengths per step (the tokenizer's grid).
        max_steps: longer remaining times share its row.
    """

    uses_history = True
    """`GPT` passes the whole token history (see the `position_features` argument of GPT)."""

    def __init__(
        self,
        d_model: int,
        *,
        time_values: Sequence[float],
        duration_values: Sequence[float],
        voice_ids: Sequence[int],
        start_id: int,
        resolution: float = 0.25,
        max_steps: int = 16,
    ) -> None:
        super().__init__()
        where = "VoiceStateFeatures"
        _check_positive_int(where, "d_model", d_model)
        times = _per_id_values(where, "time_values", time_values)
        durations = _per_id_values(where, "duration_values", duration_values)
        if len(durations) != len(times):
            raise ValueError(
                f"{where}: duration_values must have one entry per id like time_values "
                f"({len(times)}), got {len(durations)}"
            )
        voices = list(voice_ids)
        if not voices or any(
            isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < len(times) for v in voices
        ):
            raise ValueError(
                f"{where}: voice_ids must be a non-empty sequence of ids in [0, {len(times)}), "
                f"got {voices!r}"
            )
        _check_id(where, "start_id", start_id, len(times))
        _check_resolution(where, resolution)
        _check_positive_int(where, "max_steps", max_steps)
        self.start_id = start_id
        self.resolution = float(resolution)
        self.max_steps = max_steps
        self.num_voices = len(voices)
        self.unknown = max_steps + 1
        """Embedding row of an unknown state (no note of the voice in the history yet)."""
        steps = torch.tensor([round(v / resolution) for v in times], dtype=torch.long)
        lengths = torch.tensor([round(v / resolution) for v in durations], dtype=torch.long)
        # The start token moves the clock past every note before it, so those all count as
        # ended: no duration is longer than this gap.
        steps[start_id] = int(lengths.max()) + 1
        voice_of = torch.full((len(times),), -1, dtype=torch.long)
        voice_of[voices] = torch.arange(len(voices))
        self.steps: Tensor
        self.lengths: Tensor
        self.voice_of: Tensor
        self.register_buffer("steps", steps, persistent=False)  # (V,) grid steps per id
        self.register_buffer("lengths", lengths, persistent=False)  # (V,) note length per id
        self.register_buffer("voice_of", voice_of, persistent=False)  # (V,) voice index or -1
        self.voices: Tensor
        self.register_buffer("voices", torch.arange(len(voices)), persistent=False)  # (N,)
        self.embedding = nn.Embedding(len(voices) * (max_steps + 2), d_model)

    def voice_states(self, ids: Tensor) -> Tensor:
        """Per token and voice, grid steps until the voice is free, or `unknown`; (B, S, N)."""
        steps = self.steps[ids]  # (B, S)
        clock = steps.cumsum(dim=1)  # after each token's own step
        onset = clock - steps
        # A <DUR> token's voice is that of the <VOICE> token just before it.
        voice = self.voice_of[ids].roll(1, dims=1)
        voice[:, 0] = -1
        length = self.lengths[ids]
        ends_note = (length > 0) & (voice >= 0)
        mine = ends_note.unsqueeze(-1) & (voice.unsqueeze(-1) == self.voices)  # (B, S, N)
        marks = torch.where(mine, (onset + length).unsqueeze(-1), -1)
        is_start = (ids == self.start_id).unsqueeze(-1)
        marks = torch.where(is_start, clock.unsqueeze(-1), marks)
        # A voice's notes never overlap, so its latest end is the running maximum.
        latest = marks.cummax(dim=1).values
        state = (latest - clock.unsqueeze(-1)).clamp(0, self.max_steps)
        return torch.where(latest >= 0, state, self.unknown)

    def forward(self, ids: Tensor, positions: Tensor) -> Tensor:
        """Features of the last T tokens of the history ``ids`` (B, S); T from ``positions``."""
        new = positions.shape[-1]
        states = self.voice_states(ids)[:, -new:]  # (B, T, N)
        rows = states + self.voices * (self.max_steps + 2)  # each voice's own table
        return self.embedding(rows).sum(dim=-2)  # (B, T, C)

    def extra_repr(self) -> str:
        return (
            f"voices={self.num_voices}, start_id={self.start_id}, "
            f"resolution={self.resolution}, max_steps={self.max_steps}"
        )


class FeatureSum(nn.Module):
    """Several position-feature modules as one: the sum of their features.

    Each module gets what `GPT` would give it alone: the whole history when it sets
    ``uses_history``, otherwise only the new tokens.
        >>> bar = BarPositionFeatures(8, time_values=[0.0, 0.5], bar_id=0)
        >>> both = FeatureSum([bar, BarPositionFeatures(8, time_values=[0.0, 0.5], bar_id=0)])
        >>> both(torch.tensor([[0, 1, 1]]), torch.arange(3)).shape
        torch.Size([1, 3, 8])
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        if not modules:
            raise ValueError("FeatureSum: modules must hold at least one module, got none")
        self.parts = nn.ModuleList(modules)
        self.uses_history = any(getattr(m, "uses_history", False) for m in modules)

    def forward(self, ids: Tensor, positions: Tensor) -> Tensor:
        new = ids[:, -positions.shape[-1] :]
        total: Tensor | None = None
        for part in self.parts:
            features = part(ids if getattr(part, "uses_history", False) else new, positions)
            total = features if total is None else total + features
        assert total is not None
        return total


# Argument checks shared by the feature modules; each error names the module and the argument.
def _check_positive_int(where: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{where}: {name} must be a positive int, got {value!r}")


def _per_id_values(where: str, name: str, values: Sequence[float]) -> list[float]:
    out = [float(v) for v in values]
    if not out or any(not math.isfinite(v) or v < 0 for v in out):
        raise ValueError(
            f"{where}: {name} must be a non-empty sequence of finite numbers >= 0, "
            f"got {list(values)[:8]!r}..."
        )
    return out


def _check_id(where: str, name: str, token: object, size: int) -> None:
    if isinstance(token, bool) or not isinstance(token, int):
        raise ValueError(f"{where}: {name} must be an int id, got {token!r}")
    if not 0 <= token < size:
        raise ValueError(f"{where}: {name} must be an id in [0, {size}), got {token}")


def _check_resolution(where: str, resolution: object) -> None:
    if not isinstance(resolution, int | float) or not resolution > 0:
        raise ValueError(f"{where}: resolution must be a number > 0, got {resolution!r}")

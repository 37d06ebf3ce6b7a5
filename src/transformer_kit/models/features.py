"""Domain position features for `GPT(config, position_features=...)`: the position within a bar.

Music tokens carry time as deltas (a TIME token advances the clock), so where a note falls in
its bar is the sum of the time steps since the last bar line: the model cannot read it off one
token. `BarPositionFeatures` computes that running sum and adds a learned embedding of it.
    >>> features = BarPositionFeatures(8, time_values=[0.0, 0.0, 0.5], bar_id=1)
    >>> features.bar_positions(torch.tensor([[1, 2, 2, 1, 2]])).tolist()
    [[0, 0, 2, 0, 0]]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["BarPositionFeatures"]

# Shapes: B batch rows, S tokens of history, T new tokens (the last T of the history), C width.


class BarPositionFeatures(nn.Module):
    """A learned embedding of each token's position within its bar, in grid steps.

    A token's bar position is the time advanced by the tokens before it since the last reset
    token (a bar line, and optionally the start-of-piece token), counted in steps of
    ``resolution`` quarter lengths and clamped to ``max_steps``. Before the first reset token of
    the history (a training window that starts mid-bar, or a sliding generation window) the
    position is unknown and gets its own embedding row, so the model is never told a wrong one.

    With a KV cache, `GPT` hands this module the whole history from the cache
    (``uses_history``), so cached decoding gives exactly the features of a full recompute.

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
        if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model <= 0:
            raise ValueError(
                f"BarPositionFeatures: d_model must be a positive int, got {d_model!r}"
            )
        values = [float(v) for v in time_values]
        if not values or any(not math.isfinite(v) or v < 0 for v in values):
            raise ValueError(
                "BarPositionFeatures: time_values must be a non-empty sequence of finite "
                f"numbers >= 0, got {list(time_values)[:8]!r}..."
            )
        for name, token in (("bar_id", bar_id), ("start_id", start_id)):
            if token is None and name == "start_id":
                continue
            if isinstance(token, bool) or not isinstance(token, int):
                raise ValueError(f"BarPositionFeatures: {name} must be an int id, got {token!r}")
            if not 0 <= token < len(values):
                raise ValueError(
                    f"BarPositionFeatures: {name} must be an id in [0, {len(values)}), got {token}"
                )
        if not isinstance(resolution, int | float) or not resolution > 0:
            raise ValueError(
                f"BarPositionFeatures: resolution must be a number > 0, got {resolution!r}"
            )
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps <= 0:
            raise ValueError(
                f"BarPositionFeatures: max_steps must be a positive int, got {max_steps!r}"
            )
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

"""Token windows for language-model training: one 1-D id array in, ``(inputs, targets)`` out.

`TokenDataset` cuts windows of ``block_size`` ids from a corpus, with targets shifted by one;
`RandomBatches` draws training batches from it with a state that resumes exactly, and
`train_val_split` cuts a corpus into a training head and a validation tail.
    >>> inputs, targets = TokenDataset(list(range(10)), block_size=4).window(2)
    >>> inputs.tolist(), targets.tolist()
    ([2, 3, 4, 5], [3, 4, 5, 6])
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["RandomBatches", "TokenDataset", "train_val_split"]

# Shapes: B batch, T block_size (time), N num_tokens.

Batch = tuple[torch.Tensor, torch.Tensor]
_Tokens = TypeVar("_Tokens", np.ndarray, torch.Tensor, list)


class TokenDataset:
    """A 1-D corpus of token ids, cut into windows of ``block_size`` ids.

    Every window is a pair ``(inputs, targets)`` of LongTensors of shape ``(block_size,)`` with
    ``targets[i] == inputs[i + 1]``: the model predicts each next id.

    Args:
        tokens: The corpus as ids: a 1-D integer numpy array (any int dtype, memmaps included), a
            1-D integer tensor, or a sequence of ints. It is stored as a CPU int64 tensor.
        block_size: Window length T, the model's context.

    Raises:
        TypeError: If ``tokens`` is not integer-typed.
        ValueError: If ``tokens`` is not 1-D, holds negative ids, or is shorter than
            ``block_size + 1``.

    Example:
        >>> ds = TokenDataset(np.arange(100, dtype=np.uint16), block_size=8)
        >>> x, y = ds.sample_batch(4, generator=torch.Generator().manual_seed(0))
        >>> tuple(x.shape), bool((x[:, 1:] == y[:, :-1]).all())
        ((4, 8), True)
    """

    def __init__(self, tokens: np.ndarray | torch.Tensor | Sequence[int], block_size: int) -> None:
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"TokenDataset: block_size must be an int >= 1, got {block_size!r}")
        self._tokens = _as_long_tensor(tokens)
        n = self._tokens.numel()
        if n < block_size + 1:
            raise ValueError(
                f"TokenDataset: the corpus has {n} tokens but block_size={block_size} needs at "
                f"least block_size + 1 = {block_size + 1} (one window plus its shifted target); "
                "use a longer corpus or a smaller block_size"
            )
        self._block_size = block_size

    @property
    def tokens(self) -> torch.Tensor:
        """The whole corpus as a 1-D int64 tensor (shared, do not modify)."""
        return self._tokens

    @property
    def num_tokens(self) -> int:
        """Length N of the corpus."""
        return self._tokens.numel()

    @property
    def block_size(self) -> int:
        """Window length T."""
        return self._block_size

    @property
    def num_windows(self) -> int:
        """Number of valid window starts, ``N - T``: starts ``0 .. N - T - 1``."""
        return self.num_tokens - self._block_size

    @property
    def num_eval_windows(self) -> int:
        """Number of non-overlapping windows `eval_batches` yields: ``(N - 1) // T``."""
        return (self.num_tokens - 1) // self._block_size

    def window(self, start: int) -> Batch:
        """Return the window starting at ``start`` as ``(inputs, targets)``, each ``(T,)``.

        Raises:
            IndexError: If ``start`` is not in ``[0, num_windows)``.
        """
        if not 0 <= start < self.num_windows:
            raise IndexError(
                f"TokenDataset.window: start must be in [0, {self.num_windows}), got {start!r}"
            )
        chunk = self._tokens[start : start + self._block_size + 1]
        return chunk[:-1].clone(), chunk[1:].clone()

    def sample_batch(self, batch_size: int, *, generator: torch.Generator) -> Batch:
        """Draw ``batch_size`` windows at uniformly random starts; returns two ``(B, T)`` tensors.

        The starts come from one ``torch.randint`` call on ``generator``, so the same generator
        state gives the same batch.
        """
        _check_batch_size("sample_batch", batch_size)
        starts = torch.randint(0, self.num_windows, (batch_size,), generator=generator)
        return self._gather(starts)

    def eval_batches(self, batch_size: int, *, max_batches: int | None = None) -> Iterator[Batch]:
        """Yield the non-overlapping windows at starts ``0, T, 2T, ...`` in order, in batches.

        The windows cover the corpus once (the tail shorter than a window plus its target is
        left out); the last batch may hold fewer than ``batch_size`` windows.

        Args:
            batch_size: Windows per batch.
            max_batches: Stop after this many batches (``None``: all of them).
        """
        _check_batch_size("eval_batches", batch_size)
        if max_batches is not None and (isinstance(max_batches, bool) or max_batches < 0):
            raise ValueError(
                f"eval_batches: max_batches must be None or an int >= 0, got {max_batches!r}"
            )
        all_starts = torch.arange(self.num_eval_windows) * self._block_size
        for i, starts in enumerate(torch.split(all_starts, batch_size)):
            if max_batches is not None and i >= max_batches:
                return
            yield self._gather(starts)

    def _gather(self, starts: torch.Tensor) -> Batch:
        offsets = torch.arange(self._block_size + 1)
        chunk = self._tokens[starts[:, None] + offsets]  # (B, T + 1)
        return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()

    def __repr__(self) -> str:
        return f"TokenDataset(num_tokens={self.num_tokens}, block_size={self._block_size})"


class RandomBatches:
    """An endless iterator of random training batches whose position can be saved and restored.

    All ranks draw the same *global* batch of ``batch_size * world_size`` window starts from one
    ``torch.Generator`` seeded with ``seed``, and rank ``r`` keeps the slice
    ``[r * batch_size, (r + 1) * batch_size)``. A single process with
    ``batch_size * world_size`` therefore sees exactly the union of what the ranks see, so
    multi-process training equals single-process training with the same global batch, and a
    run can resume on a different ``world_size`` as long as the global batch stays the same.

    Args:
        dataset: The windows to draw from.
        batch_size: Windows per batch on this rank (the per-rank micro-batch).
        seed: Seeds the generator; every rank must pass the same seed.
        rank: This process's rank, in ``[0, world_size)``.
        world_size: Number of processes sharing the global batch.

    Example:
        >>> batches = RandomBatches(TokenDataset(list(range(50)), 8), 4, seed=1)
        >>> inputs, targets = next(batches)
        >>> tuple(inputs.shape), batches.batches_drawn, batches.tokens_seen
        ((4, 8), 1, 32)
    """

    def __init__(
        self,
        dataset: TokenDataset,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        _check_batch_size("RandomBatches", batch_size)
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"RandomBatches: world_size must be an int >= 1, got {world_size!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(
                f"RandomBatches: rank must be an int in [0, world_size={world_size}), got {rank!r}"
            )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"RandomBatches: seed must be an int, got {seed!r}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self._seed = seed
        self._generator = torch.Generator().manual_seed(seed)
        self._batches_drawn = 0

    def __iter__(self) -> RandomBatches:
        return self

    def __next__(self) -> Batch:
        global_batch = self.batch_size * self.world_size
        starts = torch.randint(
            0, self.dataset.num_windows, (global_batch,), generator=self._generator
        )
        self._batches_drawn += 1
        lo = self.rank * self.batch_size
        return self.dataset._gather(starts[lo : lo + self.batch_size])

    @property
    def seed(self) -> int:
        """The seed the generator started from."""
        return self._seed

    @property
    def batches_drawn(self) -> int:
        """Global batches drawn so far (the same on every rank)."""
        return self._batches_drawn

    @property
    def tokens_seen(self) -> int:
        """Input tokens seen by all ranks together: ``batches_drawn * B * world_size * T``."""
        return self._batches_drawn * self.batch_size * self.world_size * self.dataset.block_size

    @property
    def epoch(self) -> int:
        """Approximate epochs so far, ``tokens_seen // dataset.num_tokens``.

        Windows are drawn with replacement, so this counts corpus-lengths of tokens seen, not
        full passes over every window; it is meant for epoch-aware schedules and augmentation.
        """
        return self.tokens_seen // self.dataset.num_tokens

    def state_dict(self) -> dict[str, Any]:
        """Return the position: ``{"seed", "batches_drawn", "generator_state"}``."""
        return {
            "seed": self._seed,
            "batches_drawn": self._batches_drawn,
            "generator_state": self._generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a position saved by `state_dict`; the next batches continue that run exactly.

        The saved ``seed`` replaces the constructor's. Only the global batch size
        (``batch_size * world_size``) must match the saved run for the continuation to be exact.

        Raises:
            KeyError: If a key is missing.
            TypeError: If ``generator_state`` is not a ByteTensor.
        """
        missing = {"seed", "batches_drawn", "generator_state"} - set(state)
        if missing:
            raise KeyError(f"RandomBatches.load_state_dict: missing keys {sorted(missing)}")
        generator_state = state["generator_state"]
        if not isinstance(generator_state, torch.Tensor) or generator_state.dtype != torch.uint8:
            raise TypeError(
                "RandomBatches.load_state_dict: generator_state must be a torch.ByteTensor, "
                f"got {type(generator_state).__name__}"
            )
        self._generator.set_state(generator_state.clone())
        self._seed = int(state["seed"])
        self._batches_drawn = int(state["batches_drawn"])


def train_val_split(tokens: _Tokens, *, val_fraction: float = 0.1) -> tuple[_Tokens, _Tokens]:
    """Split a 1-D corpus into a training head and a validation tail, contiguously.

    The validation part is the last ``round(N * val_fraction)`` tokens, clamped so that both
    parts keep at least one token. The parts have the input's type (numpy array, tensor or list;
    arrays and tensors are views of the input).

    Raises:
        ValueError: If ``val_fraction`` is not in (0, 1), or ``tokens`` has fewer than 2 items.

    Example:
        >>> train_val_split(list(range(10)), val_fraction=0.2)
        ([0, 1, 2, 3, 4, 5, 6, 7], [8, 9])
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"train_val_split: val_fraction must be in (0, 1), got {val_fraction!r}")
    if isinstance(tokens, (np.ndarray, torch.Tensor)) and tokens.ndim != 1:
        raise ValueError(f"train_val_split: tokens must be 1-D, got shape {tuple(tokens.shape)}")
    n = len(tokens)
    if n < 2:
        raise ValueError(f"train_val_split: tokens must hold at least 2 items to split, got {n}")
    n_val = min(max(round(n * val_fraction), 1), n - 1)
    return tokens[: n - n_val], tokens[n - n_val :]


def _as_long_tensor(tokens: np.ndarray | torch.Tensor | Sequence[int]) -> torch.Tensor:
    if isinstance(tokens, torch.Tensor):
        tensor = tokens.detach().cpu()
    elif isinstance(tokens, np.ndarray):
        if tokens.dtype.kind not in "iu":
            raise TypeError(
                f"TokenDataset: tokens must have an integer dtype, got numpy {tokens.dtype}"
            )
        # astype copies, so a read-only memmap is never shared with torch.
        tensor = torch.from_numpy(tokens.astype(np.int64))
    else:
        tensor = torch.as_tensor(list(tokens))
        if tensor.numel() == 0:
            tensor = tensor.long()
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise TypeError(f"TokenDataset: tokens must have an integer dtype, got {tensor.dtype}")
    if tensor.ndim != 1:
        raise ValueError(f"TokenDataset: tokens must be 1-D, got shape {tuple(tensor.shape)}")
    tensor = tensor.to(torch.long).contiguous()
    if tensor.numel() and int(tensor.min()) < 0:
        raise ValueError(f"TokenDataset: token ids must be >= 0, got minimum {int(tensor.min())}")
    return tensor


def _check_batch_size(where: str, batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{where}: batch_size must be an int >= 1, got {batch_size!r}")

"""Argument checks shared by `generate` and `beam_search`.

Each check raises a `ValueError` that starts with the calling function (`where`) and names the
parameter, the value and what is allowed. They run once per call, before any decoding step.

    >>> _token_ids("beam_search", "stop_ids", (3, 0), 4)
    [3, 0]
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

import torch
from torch import Tensor, nn

from transformer_kit._numbers import _as_int

__all__: list[str] = []


def _vocab_size(model: nn.Module) -> int | None:
    """`model.config.vocab_size` when it is an int >= 1 (`GPT`, `Ensemble`), else None."""
    size = _as_int(getattr(getattr(model, "config", None), "vocab_size", None))
    return size if size is not None and size >= 1 else None


def _id_range(vocab_size: int | None) -> str:
    return ">= 0" if vocab_size is None else f"in [0, {vocab_size})"


def _check_prompt(ids: object, where: str, vocab_size: int | None = None) -> None:
    """Raise unless `ids` is an integer tensor `(B, T)` with `T >= 1` and ids in the vocabulary.

    The range check (one min and max over `ids`) runs only when `vocab_size` is known.
    """
    if not isinstance(ids, Tensor):
        raise ValueError(
            f"{where}: ids must be an integer tensor (such as a LongTensor) of shape (B, T) with"
            f" T >= 1, got a {type(ids).__name__}; wrap a list of rows with torch.tensor"
        )
    if ids.dim() != 2 or ids.size(1) < 1 or ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(  # the dtypes an embedding takes: int8/16 and uint8 fail inside torch
            f"{where}: ids must be an integer tensor (int64 or int32) of shape (B, T) with"
            f" T >= 1, got dtype {ids.dtype} and shape {tuple(ids.shape)}"
        )
    if vocab_size is None or ids.numel() == 0:
        return
    low, high = (int(bound) for bound in torch.aminmax(ids))  # Python ints: no dtype wrap-around
    if low >= 0 and high < vocab_size:
        return
    wide = ids.long()
    row, column = ((wide < 0) | (wide >= vocab_size)).nonzero()[0].tolist()
    raise ValueError(
        f"{where}: ids must hold token ids in [0, {vocab_size}) (the model's"
        f" config.vocab_size), got {ids[row, column].item()} at row {row}, column {column}"
    )


def _as_list(values: object) -> list[object] | None:
    """`values` as a list: a tensor of one or more dims by `tolist`, any other non-string
    iterable by `list`; None for a scalar or a string."""
    if isinstance(values, Tensor):
        return values.tolist() if values.dim() >= 1 else None
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        return None
    return list(values)


def _is_token_id(value: int | None, vocab_size: int | None) -> bool:
    return value is not None and value >= 0 and (vocab_size is None or value < vocab_size)


def _token_id(where: str, name: str, value: object, vocab_size: int | None, note: str = "") -> int:
    """`value` as an int, after checking it is a token id in `[0, vocab_size)` (>= 0 if None)."""
    number = _as_int(value)
    if number is None or not _is_token_id(number, vocab_size):
        allowed = _id_range(vocab_size)
        raise ValueError(f"{where}: {name} must be an int token id {allowed}{note}, got {value!r}")
    return number


def _token_ids(where: str, name: str, values: object, vocab_size: int | None) -> list[int]:
    """`values` (a sequence of token ids, or a 1-D integer tensor) as a list of checked ints."""
    items = _as_list(values)
    if items is None:
        raise ValueError(f"{where}: {name} must be a sequence of int token ids, got {values!r}")
    checked = []
    for index, item in enumerate(items):
        number = _as_int(item)
        if number is None or not _is_token_id(number, vocab_size):
            raise ValueError(
                f"{where}: {name} must hold int token ids {_id_range(vocab_size)},"
                f" got {item!r} at index {index}"
            )
        checked.append(number)
    return checked


def _output_buffer(
    where: str, max_new_tokens: int, shape: tuple[int, int], ids: Tensor, fill: int | None = None
) -> Tensor:
    """A `shape` tensor of `ids`' dtype and device, uninitialised or full of `fill`.

    Its columns hold the `max_new_tokens` new tokens, so a failed allocation (torch's allocator
    error, a byte count past int64, a size torch cannot take at all) is a `ValueError` that
    names `max_new_tokens`, its value and the size asked for.
    """
    try:
        if fill is None:
            return torch.empty(shape, dtype=ids.dtype, device=ids.device)
        return torch.full(shape, fill, dtype=ids.dtype, device=ids.device)
    except (RuntimeError, TypeError) as error:  # TypeError: a dimension past int64
        rows, columns = shape
        dtype = str(ids.dtype).removeprefix("torch.")
        size = _size_text(rows * columns * ids.element_size())
        raise ValueError(
            f"{where}: max_new_tokens={max_new_tokens} needs a {rows} x {columns} {dtype} output"
            f" buffer ({size}), which cannot be allocated; ask for fewer tokens"
        ) from error


def _size_text(n_bytes: int) -> str:
    """`n_bytes` in decimal units (8.0 TB); past 1000 PB as 8.0e+30 bytes."""
    for power, unit in enumerate(("bytes", "KB", "MB", "GB", "TB", "PB")):
        if n_bytes < 1000 ** (power + 1):
            return f"{n_bytes / 1000**power:.1f} {unit}"
    return f"{Decimal(n_bytes):.1e} bytes"  # exact for any int, where float() would overflow


def _stop_sequences(where: str, stop_sequences: object, vocab_size: int | None) -> list[list[int]]:
    """`stop_sequences` as lists of checked token ids, each non-empty."""
    wanted = f"{where}: stop_sequences must be a sequence of token sequences such as [[5, 6]]"
    items = _as_list(stop_sequences)
    if items is None:
        raise ValueError(f"{wanted}, got {stop_sequences!r}")
    sequences = []
    for index, item in enumerate(items):
        sequence = _as_list(item)
        if sequence is None:
            raise ValueError(
                f"{wanted} (a single stop token goes in stop_ids), got {item!r} at index {index}"
            )
        if not sequence:
            raise ValueError(
                f"{where}: stop_sequences must hold non-empty token sequences,"
                f" got {sequence!r} at index {index}"
            )
        sequences.append(_token_ids(where, f"stop_sequences[{index}]", sequence, vocab_size))
    return sequences

"""One checkpoint file: save a state dict atomically, load it back without running pickled code."""

from __future__ import annotations

import logging
import math
import pickle
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from transformer_kit._version import __version__
from transformer_kit.checkpoint._atomic import CheckpointError, atomic_write, sha256_file

__all__ = [
    "FORMAT_VERSION",
    "Stateful",
    "check_config",
    "checkpoint_payload",
    "load_checkpoint",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Layout version of the files this library writes; a newer one is refused on load."""

_SHA256 = re.compile(r"[0-9a-f]{64}")


@runtime_checkable
class Stateful(Protocol):
    """Anything a resumed run must restore: modules, optimizers, schedulers, early stopping."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], /) -> Any: ...


def checkpoint_payload(state: Mapping[str, Any]) -> dict[str, Any]:
    """The dict that is written for `state`: Stateful values become their `state_dict()`, and
    `versions` gains the library version and format where missing. `state` is not modified."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping of names to values, got {type(state).__name__}")
    payload = {
        key: value.state_dict() if _is_stateful(value) else value for key, value in state.items()
    }
    versions = payload.get("versions")
    if versions is None:
        payload["versions"] = {"library": __version__, "format": FORMAT_VERSION}
    elif isinstance(versions, Mapping):
        payload["versions"] = {"library": __version__, "format": FORMAT_VERSION, **versions}
    return payload


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> str:
    """Write `state` to `path` with `torch.save`, atomically and durably; returns its sha256.

    The file is written under a temporary name in the same folder (created if needed), flushed,
    fsynced, closed, renamed over `path`, and the folder is fsynced. A crash at any point
    leaves the previous file at `path` (or the complete new one), never a partial file.

    Args:
        path: the checkpoint file, e.g. ``runs/a/last.pt``.
        state: names to tensors, numbers, strings, lists, dicts or `Stateful` objects (saved
            as their ``state_dict()``). Store only what ``weights_only`` loading accepts.

    Raises:
        CheckpointError: naming `path` and the OS error (ENOSPC, EFBIG, ...); the temporary file
            is removed and the previous file at `path` is intact.

    Example:
        >>> digest = save_checkpoint(tmp / "last.pt", {"model": model, "step": 100})
    """
    payload = checkpoint_payload(state)
    return atomic_write(Path(path), lambda file: torch.save(payload, file)).sha256


def load_checkpoint(
    path: str | Path,
    *,
    map_location: str | torch.device | None = "cpu",
    expected_sha256: str | None = None,
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``, so no pickled code can run.

    Args:
        path: a file written by `save_checkpoint` (or any ``torch.save`` of a dict).
        map_location: where tensors go, as for ``torch.load``.
        expected_sha256: when given, the file's sha256 must match before anything is read.

    Raises:
        CheckpointError: naming the file when it is missing, truncated, corrupt, does not match
            `expected_sha256`, holds objects weights-only loading refuses, or was written in a
            newer format than this library reads.
    """
    path = Path(path)
    if expected_sha256 is not None and not _SHA256.fullmatch(expected_sha256.lower()):
        raise ValueError(
            f"load_checkpoint: expected_sha256 must be 64 hex digits, got {expected_sha256!r}"
        )
    if not path.is_file():
        raise CheckpointError(f"cannot load {path}: no such file")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256.lower():
            raise CheckpointError(
                f"{path} is corrupt (sha256 mismatch): expected {expected_sha256.lower()}, "
                f"the file has {actual}"
            )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} holds objects that weights-only loading refuses; store only tensors, "
            f"numbers, strings, lists and dicts ({_first_line(error)})"
        ) from error
    except Exception as error:
        raise CheckpointError(
            f"{path} is truncated or corrupt and cannot be loaded "
            f"({type(error).__name__}: {_first_line(error)})"
        ) from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a checkpoint dict")
    _check_format(path, state.get("versions"))
    return state


def check_config(saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Refuse to continue when the saved config differs from the current one.

    Nested mappings are compared field by field (``model.n_layer``); lists and tuples with the
    same items are equal, since JSON turns tuples into lists.

    Raises:
        CheckpointError: naming each differing field with both values, and each field present
            on one side only.
    """
    for name, value in (("saved", saved), ("current", current)):
        if not isinstance(value, Mapping):
            raise TypeError(f"check_config: {name} must be a mapping, got {type(value).__name__}")
    differences = list(_differences(saved, current, prefix=""))
    if differences:
        raise CheckpointError(
            "the checkpoint's config differs from the current one: "
            + "; ".join(differences)
            + ". Resume with the saved config or start a new run"
        )


def _is_stateful(value: object) -> bool:
    return isinstance(value, Stateful) and not isinstance(value, (Mapping, torch.Tensor, type))


def _check_format(path: Path, versions: object) -> None:
    if not isinstance(versions, Mapping):
        logger.debug("%s records no versions; assuming format %d", path, FORMAT_VERSION)
        return
    found = versions.get("format")
    if isinstance(found, int) and found > FORMAT_VERSION:
        writer = versions.get("library", "an unknown version")
        raise CheckpointError(
            f"{path} uses checkpoint format {found} (written by transformer-kit {writer}), but "
            f"transformer-kit {__version__} reads formats up to {FORMAT_VERSION}: upgrade "
            f"transformer-kit (pip install -U transformer-kit) to load it"
        )


def _differences(
    saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str
) -> Iterator[str]:
    for key in sorted(set(saved) | set(current), key=str):
        name = f"{prefix}{key}"
        if key not in current:
            yield f"{name}: only in the saved config ({saved[key]!r})"
        elif key not in saved:
            yield f"{name}: only in the current config ({current[key]!r})"
        elif isinstance(saved[key], Mapping) and isinstance(current[key], Mapping):
            yield from _differences(saved[key], current[key], prefix=f"{name}.")
        elif not _same(saved[key], current[key]):
            yield f"{name}: saved {saved[key]!r}, current {current[key]!r}"


def _same(a: object, b: object) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

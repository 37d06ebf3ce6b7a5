"""Export trained weights as safetensors + JSON, which load without unpickling anything.

safetensors refuses tensors that share memory, as tied weights do (the embedding and the output
layer of a GPT). Each shared tensor is stored once, under the first name ``state_dict()`` gives
it, and the other names are recorded as aliases in the file's metadata; `load_weights` puts them
back, so ``model.load_state_dict(state)`` works on the tied model.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
from torch import Tensor, nn

from transformer_kit._version import __version__
from transformer_kit.checkpoint._atomic import CheckpointError, atomic_write

__all__ = [
    "ALIASES_KEY",
    "CONFIG_NAME",
    "TOKENIZER_NAME",
    "WEIGHTS_NAME",
    "export_weights",
    "load_weights",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TOKENIZER_NAME = "tokenizer.json"
ALIASES_KEY = "transformer_kit.aliases"
"""safetensors metadata key: JSON object mapping each alias to the name its tensor is stored as."""


def export_weights(
    model: nn.Module,
    directory: str | Path,
    *,
    config: Mapping[str, Any] | None = None,
    tokenizer: object | None = None,
) -> Path:
    """Write `model.safetensors`, and `config.json` and `tokenizer.json` when given, atomically.

    Args:
        model: its ``state_dict()`` is exported; tied weights are stored once (see module doc).
        directory: the folder (created if needed); returned.
        config: JSON-serialisable settings that rebuild the model, e.g. ``config.to_dict()``.
        tokenizer: any object with ``save(path)`` writing one file; it becomes `tokenizer.json`.

    Raises:
        TypeError: when `model` is no module, `config` is not JSON-serialisable or `tokenizer`
            has no ``save``; nothing is written then.
        CheckpointError: when a write fails; files already at the final names are intact.

    Example:
        >>> export_weights(model, "runs/a/export", config={"vocab_size": 65})
        >>> state, config = load_weights("runs/a/export")
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"export_weights: model must be a torch.nn.Module, got {type(model).__name__}"
        )
    if tokenizer is not None and not callable(getattr(tokenizer, "save", None)):
        raise TypeError(
            "export_weights: tokenizer must have a save(path) method, "
            f"got {type(tokenizer).__name__}"
        )
    config_text = None
    if config is not None:
        try:
            config_text = json.dumps(dict(config), indent=2, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise TypeError(f"export_weights: config must be JSON-serialisable: {error}") from error
    tensors, aliases = _store_shared_once(model.state_dict())
    metadata = {"format": "pt", "transformer_kit.version": __version__}
    metadata[ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
    data = safetensors.torch.save(tensors, metadata=metadata)

    directory = Path(directory)
    atomic_write(directory / WEIGHTS_NAME, lambda file: file.write(data))
    if config_text is not None:
        text = config_text + "\n"
        atomic_write(directory / CONFIG_NAME, lambda file: file.write(text.encode("utf-8")))
    if tokenizer is not None:
        _export_tokenizer(tokenizer, directory)
    return directory


def load_weights(directory: str | Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """Read what `export_weights` wrote: ``(state_dict, config or None)``, aliases restored.

    Nothing is unpickled: the weights are safetensors and the config is JSON. Load the
    tokenizer from `tokenizer.json` with its own class.

    Raises:
        CheckpointError: naming the file when the weights are missing or unreadable or the
            config is not valid JSON.
    """
    directory = Path(directory)
    path = directory / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"cannot load weights: {path} does not exist")
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as file:
            metadata = file.metadata() or {}
            state = {name: file.get_tensor(name) for name in file.keys()}
        aliases = json.loads(metadata.get(ALIASES_KEY, "{}"))
        for alias, stored in aliases.items():
            state[alias] = state[stored]
    except Exception as error:
        raise CheckpointError(f"{path} is truncated or corrupt ({error})") from error
    config = None
    config_path = directory / CONFIG_NAME
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise CheckpointError(f"{config_path} is not valid JSON ({error})") from error
    return state, config


def _store_shared_once(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Split a state dict into tensors safetensors accepts and ``{alias: stored name}``."""
    stored: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    first_name: dict[tuple[object, ...], str] = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        # The same view of the same memory: a tied weight, stored once.
        view = (
            tensor.device,
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tensor.stride(),
            tensor.dtype,
        )
        if tensor.numel() > 0 and view in first_name:
            aliases[name] = first_name[view]
            continue
        first_name[view] = name
        stored[name] = tensor
    # Different views of one memory block (slices of a buffer) cannot alias: give each a copy.
    by_memory: dict[tuple[object, int], list[str]] = {}
    for name, tensor in stored.items():
        if tensor.numel() > 0:
            by_memory.setdefault((tensor.device, tensor.untyped_storage().data_ptr()), []).append(
                name
            )
    for names in by_memory.values():
        if len(names) > 1:
            for name in names:
                stored[name] = stored[name].clone()
    return {name: tensor.contiguous().cpu() for name, tensor in stored.items()}, aliases


def _export_tokenizer(tokenizer: Any, directory: Path) -> None:
    # The tokenizer writes where it likes; it is saved into a scratch folder beside the target
    # and then published atomically like every other file.
    with tempfile.TemporaryDirectory(prefix=TOKENIZER_NAME + ".tmp.", dir=directory) as scratch:
        target = Path(scratch) / TOKENIZER_NAME
        tokenizer.save(str(target))
        if not target.is_file():
            raise CheckpointError(
                f"tokenizer.save({str(target)!r}) wrote no file there; export_weights needs a "
                f"tokenizer whose save(path) writes one file"
            )
        data = target.read_bytes()
    atomic_write(directory / TOKENIZER_NAME, lambda file: file.write(data))

"""Fully sharded data parallel (FSDP2) for models that do not fit one device, with DCP checkpoints.

`shard_model` applies torch's `fully_shard` to each transformer block and then to the root, so
each rank holds 1/N of every parameter, gradient and optimizer state. `save_sharded` and
`load_sharded` write and read a torch.distributed.checkpoint (DCP) directory in which each rank
stores its own shards; `consolidate_to_full_state_dict` gathers ordinary weights on rank 0 for
export. Every function here is collective: call it on every rank, in the same order. Under
torchrun, `transformer_kit.distributed.init_distributed` sets up the process group; here, in a
one-process group, `model` stands for a sharded GPT (see `shard_model`):
    >>> path = save_sharded(f"{tempfile.mkdtemp()}/step_3", model, None, extra={"step": 3})
    >>> load_sharded(path, model, None)
    {'step': 3}
"""

from __future__ import annotations

import io
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.optim import Optimizer

from transformer_kit.checkpoint import CheckpointError
from transformer_kit.checkpoint._atomic import fsync_folder

__all__ = [
    "consolidate_to_full_state_dict",
    "load_sharded",
    "save_sharded",
    "shard_model",
    "sharded_folders",
]

_log = logging.getLogger(__name__)

_METADATA = ".metadata"
"""DCP's index of a checkpoint, written by rank 0 after every rank's shards (dcp.save)."""
_EXTRA = "extra.pt"
"""Rank 0's file beside the shards: {"extra": the caller's small state (step, RNG, data
position), "optimizer_was_empty": whether the optimizer had no state yet when saved}."""
_TEMP_SUFFIX = ".tmp"
"""`<name>.tmp` is the directory a save writes into before it is renamed onto `<name>`."""
_BACKUP_SUFFIX = ".old"
"""`<name>.old` holds the previous checkpoint for the instant between the two renames."""
# DCP gathers the errors of every rank into a CheckpointException, which derives from
# BaseException (torch/distributed/checkpoint/api.py), so `except Exception` misses it.
_DCP_ERRORS = (Exception, dcp.CheckpointException)


def shard_model(
    model: nn.Module,
    *,
    blocks: Iterable[nn.Module] | None = None,
    mixed_precision: MixedPrecisionPolicy | None = None,
    mesh: DeviceMesh | None = None,
) -> nn.Module:
    """Shard `model` in place with FSDP2: each block, then the root.

    Sharding block by block makes each block one all-gather / reduce-scatter group, so only
    one block's full parameters exist at a time and communication overlaps compute; the root
    call takes the remaining parameters (embeddings, final norm, head). This is the order the
    `fully_shard` documentation recommends (bottom-up, not the root alone).

    Args:
        model: the model, already on its training device (CPU for gloo, CUDA for nccl).
        blocks: the repeated layers to shard one by one; defaults to `model.blocks` (the kit's
            GPT has them). Pass `[]` to shard the root as a single group.
        mixed_precision: e.g. `MixedPrecisionPolicy(param_dtype=torch.bfloat16,
            reduce_dtype=torch.float32)`; None keeps every dtype as it is.
        mesh: a 1-D device mesh over the ranks to shard across; None builds one over the
            whole default process group, on the device type of the model's parameters.

    Returns:
        `model` itself, now an FSDPModule whose parameters are sharded DTensors.

    Raises:
        RuntimeError: if no process group is initialised.
        ValueError: if the blocks cannot be found or are not submodules of `model`, the model
            is already sharded, or its device does not suit the process group's backend.

    Example:
        >>> from transformer_kit.models import GPT, GPTConfig
        >>> model = shard_model(GPT(GPTConfig(vocab_size=32, n_layer=2, d_model=64, n_head=2)))
        >>> optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)  # over the shards
        >>> model.tok_emb.weight.placements
        (Shard(dim=0),)
    """
    _require_process_group("shard_model")
    if isinstance(model, FSDPModule):
        raise ValueError(f"shard_model: {type(model).__name__} is already sharded")
    if blocks is None:
        found = getattr(model, "blocks", None)
        if not isinstance(found, Iterable):
            raise ValueError(
                f"shard_model: blocks is None and {type(model).__name__} has no iterable "
                "`blocks` attribute; pass blocks=... (the repeated layers, e.g. model.layers)"
            )
        blocks = found
    block_list = list(blocks)
    submodules = {id(m) for m in model.modules() if m is not model}
    for index, block in enumerate(block_list):
        if not isinstance(block, nn.Module) or id(block) not in submodules:
            raise ValueError(
                f"shard_model: blocks[{index}] must be a submodule of the model (not the model "
                f"itself), got {type(block).__name__}"
            )
    if mesh is None:
        mesh = init_device_mesh(_device_type(model), (dist.get_world_size(),))
    policy = mixed_precision if mixed_precision is not None else MixedPrecisionPolicy()
    for block in block_list:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def save_sharded(
    directory: str | os.PathLike[str],
    model: nn.Module,
    optimizer: Optimizer | None,
    *,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write model and optimizer shards (and rank 0's `extra`) to a DCP checkpoint directory.

    Each rank writes its own shards into `<directory>.tmp`; after every rank has finished,
    rank 0 renames that onto `directory` and fsyncs the parent. A crash or error at any point
    leaves the previous checkpoint under `directory` (or, for the instant between two renames,
    under `<directory>.old`, which `load_sharded` and the next save recover) and never a
    half-written one under the final name.

    Args:
        directory: the checkpoint directory, on a filesystem every rank can reach.
        model: a model sharded by `shard_model` (a plain, unwrapped model also works).
        optimizer: its optimizer, or None to save the model alone.
        extra: small state that is the same on every rank (step, scheduler, RNG, data
            position); rank 0 writes it as `extra.pt`. It must load with
            `torch.load(weights_only=True)`: tensors, numbers, strings, lists, tuples, dicts.

    Returns:
        The final directory.

    Raises:
        RuntimeError: if no process group is initialised.
        ValueError: if `extra` would not load with weights_only=True.
        CheckpointError: if `directory` exists but holds no DCP checkpoint, or the write or
            the rename fails; the previous checkpoint is untouched.
    """
    _require_process_group("save_sharded")
    final = Path(directory)
    temp = _sibling(final, _TEMP_SUFFIX)
    was_empty = optimizer is not None and not optimizer.state

    def prepare() -> None:
        payload = _serialise_extra({"extra": dict(extra or {}), "optimizer_was_empty": was_empty})
        _refuse_foreign(final)
        _recover(final)
        if temp.exists():
            shutil.rmtree(temp)  # left by a save that crashed; never a finished checkpoint
        temp.mkdir(parents=True)
        _write_synced(temp / _EXTRA, payload)

    try:
        state = _collect_state(model, optimizer)  # collective; wraps the shards, copies nothing
        _on_main(prepare, f"save_sharded: could not prepare {temp}")
        _write_shards(state, temp, final)
        # dcp.save returns on rank 0 once every rank's shards are written; the barrier says so.
        dist.barrier()
        _on_main(lambda: _publish(temp, final), f"save_sharded: could not rename {temp} to {final}")
    finally:
        if optimizer is not None and was_empty:
            _forget_initial_state(optimizer)
    return final


def load_sharded(
    directory: str | os.PathLike[str],
    model: nn.Module,
    optimizer: Optimizer | None,
    *,
    check: Callable[[Mapping[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Load a `save_sharded` checkpoint into `model` (and `optimizer`) in place.

    The number of ranks may differ from the run that saved it: DCP reshards on load. Build
    the model, shard it and create the optimizer exactly as for training, then call this.

    Args:
        directory: a directory written by `save_sharded`.
        model: the model, sharded as when it was saved (or plain, for a single process).
        optimizer: its optimizer, or None to load the weights alone.
        check: called with the `extra` state before anything is loaded; an exception it
            raises propagates and leaves `model` and `optimizer` as they were.

    Returns:
        The `extra` state saved with it (an empty dict when none was), on every rank.

    Raises:
        RuntimeError: if no process group is initialised.
        FileNotFoundError: if there is no checkpoint at `directory`.
        CheckpointError: if the checkpoint does not fit the model or optimizer.
    """
    _require_process_group("load_sharded")
    source = _readable(Path(directory))
    extra_path = source / _EXTRA
    saved: dict[str, Any] = {"extra": {}, "optimizer_was_empty": False}  # a foreign DCP dir
    if extra_path.exists():
        saved = torch.load(extra_path, map_location="cpu", weights_only=True)
    if check is not None:
        check(saved["extra"])
    was_empty = optimizer is not None and not optimizer.state
    try:
        state = _collect_state(model, optimizer)
        dcp.load(state, checkpoint_id=source)
        if optimizer is None:
            set_model_state_dict(model, state["model"])
        else:
            set_state_dict(
                model,
                optimizer,
                model_state_dict=state["model"],
                optim_state_dict=state["optimizer"],
            )
    except _DCP_ERRORS as error:
        if optimizer is not None and was_empty:
            _forget_initial_state(optimizer)
        raise CheckpointError(
            f"load_sharded: {source} does not fit this model/optimizer: "
            f"{type(error).__name__}: {error}"
        ) from error
    if optimizer is not None and saved["optimizer_was_empty"]:
        _forget_initial_state(optimizer)
    return dict(saved["extra"])


def sharded_folders(directory: str | os.PathLike[str]) -> list[Path]:
    """The folders that hold the `save_sharded` checkpoint at `directory`, those that exist.

    `directory` itself, then the `<name>.old` backup that a crash between a save's two
    renames leaves (`load_sharded` reads that one when `directory` has no checkpoint). Empty
    when neither exists. Not collective: it only looks at the file system.
    """
    final = Path(directory)
    return [path for path in (final, _sibling(final, _BACKUP_SUFFIX)) if path.is_dir()]


def consolidate_to_full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Gather the full, unsharded model state onto rank 0's CPU, e.g. to export weights.

    Collective: every rank must call it. Rank 0 gets ordinary tensors under the keys of the
    unsharded model's `state_dict()`; the other ranks get an empty dict. Without a process
    group (a plain model in one process) it returns the model's state on CPU.

    Example:
        >>> state = consolidate_to_full_state_dict(model)  # `model` sharded, as in shard_model
        >>> state["head.weight"].shape, type(state["head.weight"]).__name__
        (torch.Size([32, 64]), 'Tensor')
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return cast(dict[str, Tensor], get_model_state_dict(model, options=options))


def _require_process_group(caller: str) -> None:
    # fully_shard would otherwise call init_process_group() itself and fail (or wait) on a
    # missing torchrun environment.
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"{caller} needs an initialised process group: run under torchrun and call "
            "transformer_kit.distributed.init_distributed() (or "
            "torch.distributed.init_process_group) first"
        )


def _device_type(model: nn.Module) -> str:
    devices = {p.device.type for p in model.parameters()}
    if len(devices) != 1:
        raise ValueError(
            f"shard_model: the model's parameters must be on one device type, got "
            f"{sorted(devices) or 'no parameters'}; move it with model.to(device) first"
        )
    device_type = devices.pop()
    if device_type == "meta":
        raise ValueError(
            "shard_model: the model is on the meta device; pass mesh=init_device_mesh("
            "'cuda', (world_size,)) so the shards know where to live"
        )
    backend = str(dist.get_backend())
    if device_type == "cpu" and "gloo" not in backend:
        raise ValueError(
            f"shard_model: the model is on the CPU but the process group's backend is "
            f"{backend!r}; CPU sharding needs gloo (move the model to CUDA for nccl)"
        )
    return device_type


def _collect_state(model: nn.Module, optimizer: Optimizer | None) -> dict[str, Any]:
    # get_state_dict names optimizer state by parameter name (not position) and keeps the
    # FSDP2 shards as DTensors, so each rank saves and loads only its own part.
    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state}


def _write_shards(state: dict[str, Any], temp: Path, final: Path) -> None:
    try:
        dcp.save(state, checkpoint_id=temp)
    except _DCP_ERRORS as error:
        # DCP gathers every rank's error, so every rank raises here together.
        if dist.get_rank() == 0:
            shutil.rmtree(temp, ignore_errors=True)
        raise CheckpointError(
            f"save_sharded: could not write {final}: {type(error).__name__}: {error}; "
            "the previous checkpoint is untouched"
        ) from error


def _forget_initial_state(optimizer: Optimizer) -> None:
    """Undo the state that get_state_dict gives an optimizer that has not stepped yet.

    torch fills it by one step with zero gradients and lr 0 (`_init_optim_state` in
    torch/distributed/checkpoint/state_dict.py). The weights do not move, but Adam's step
    count does, and the bias correction of every later update would differ from a run that
    never saved; an optimizer with no state is exactly where it started.
    """
    optimizer.state.clear()


def _serialise_extra(extra: Mapping[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(dict(extra), buffer)
    try:
        torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    except Exception as error:
        raise ValueError(
            "save_sharded: extra must load with torch.load(weights_only=True) (tensors, "
            f"numbers, strings, lists, tuples, dicts); got {type(error).__name__}: {error}"
        ) from error
    return buffer.getvalue()


def _on_main(action: Callable[[], None], failure: str) -> None:
    """Run `action` on rank 0 only; every rank raises its error, or returns, together.

    An OSError becomes a CheckpointError that starts with `failure`.
    """
    error: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            action()
        except OSError as caught:
            error = CheckpointError(f"{failure}: {caught}; the previous checkpoint is untouched")
            error.__cause__ = caught
        except (ValueError, CheckpointError) as caught:
            error = caught
    outcome: list[BaseException | None] = [error]
    dist.broadcast_object_list(outcome, src=0)
    received = outcome[0]
    if received is None:
        return
    if error is not None:
        raise error
    raise received


def _sibling(final: Path, suffix: str) -> Path:
    return final.with_name(final.name + suffix)


def _refuse_foreign(final: Path) -> None:
    # The swap deletes what was under `directory`; never do that to a folder of other files.
    if final.exists() and not (final / _METADATA).is_file():
        raise CheckpointError(
            f"save_sharded: {final} exists but holds no DCP checkpoint ({_METADATA}); "
            "refusing to replace it"
        )


def _recover(final: Path) -> None:
    """Finish or undo a swap that a crash interrupted between its two renames."""
    backup = _sibling(final, _BACKUP_SUFFIX)
    if not backup.exists():
        return
    if final.exists():
        shutil.rmtree(backup)  # the new checkpoint was already in place
    else:
        os.replace(backup, final)  # the new one never arrived: the previous one comes back
        fsync_folder(final.parent)


def _publish(temp: Path, final: Path) -> None:
    fsync_folder(temp)
    backup = _sibling(final, _BACKUP_SUFFIX)
    # A directory cannot be renamed over a non-empty one, so the previous checkpoint steps
    # aside to `.old` first; `_recover` handles a crash between the two renames.
    had_previous = final.exists()
    if had_previous:
        os.replace(final, backup)
    try:
        os.replace(temp, final)
    except OSError:
        if had_previous:
            os.replace(backup, final)
        shutil.rmtree(temp, ignore_errors=True)
        raise
    fsync_folder(final.parent)
    if had_previous:
        # The new checkpoint is in place; a backup that will not go is removed by the next save.
        shutil.rmtree(backup, ignore_errors=True)


def _readable(final: Path) -> Path:
    if (final / _METADATA).is_file():
        return final
    backup = _sibling(final, _BACKUP_SUFFIX)
    if (backup / _METADATA).is_file():
        _log.warning("%s is missing; loading the previous checkpoint from %s", final, backup)
        return backup
    raise FileNotFoundError(f"load_sharded: no checkpoint at {final} (no {_METADATA} file)")


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())

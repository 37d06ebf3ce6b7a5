"""Capture and restore the global random number generators, in a form weights-only loading reads.

`random.getstate()` and numpy's `get_state()` return tuples holding numpy arrays, which
``torch.load(weights_only=True)`` refuses; here they become dicts of ints, floats, strings,
lists and tensors, so the RNG state can live inside an ordinary checkpoint.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state"]

logger = logging.getLogger(__name__)

_REQUIRED = ("python", "numpy", "torch")


def capture_rng_state() -> dict[str, Any]:
    """The state of python's `random`, numpy's global RNG and torch's CPU (and CUDA) RNGs.

    Example:
        >>> state = capture_rng_state()
        >>> first = random.random()
        >>> restore_rng_state(state)
        >>> random.random() == first
        True
    """
    version, internal, gauss_next = random.getstate()
    name, key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "bit_generator": str(name),
            # MT19937 words are uint32; int64 holds them exactly and torch stores it.
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back the RNG states captured by `capture_rng_state` (possibly after a save/load).

    CUDA states are restored when CUDA is available, on as many devices as both runs have.

    Raises:
        ValueError: when `state` lacks one of "python", "numpy" or "torch".
    """
    missing = [key for key in _REQUIRED if key not in state]
    if missing:
        raise ValueError(
            f"restore_rng_state: state is missing {missing}; pass the dict from capture_rng_state()"
        )
    python_state = state["python"]
    internal = tuple(int(word) for word in python_state["internal"])
    random.setstate((int(python_state["version"]), internal, python_state["gauss_next"]))

    numpy_state = state["numpy"]
    key = numpy_state["key"]
    key = key.cpu().numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
    np.random.set_state(
        (
            numpy_state["bit_generator"],
            key.astype(np.uint32),
            int(numpy_state["pos"]),
            int(numpy_state["has_gauss"]),
            float(numpy_state["cached_gaussian"]),
        )
    )

    torch.set_rng_state(state["torch"].to("cpu", torch.uint8))
    cuda_states = state.get("torch_cuda")
    if cuda_states is None:
        return
    if not torch.cuda.is_available():
        logger.warning("the saved CUDA RNG states are not restored: CUDA is not available")
        return
    count = torch.cuda.device_count()
    if len(cuda_states) != count:
        logger.warning(
            "restoring %d saved CUDA RNG states on %d devices; the rest are left as they are",
            len(cuda_states),
            count,
        )
    for device, device_state in enumerate(cuda_states[:count]):
        torch.cuda.set_rng_state(device_state.to("cpu", torch.uint8), device=device)

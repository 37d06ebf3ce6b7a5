"""Run health figures for evaluations: peak memory, model FLOPs per token, device peak FLOPs."""

from __future__ import annotations

import math
import resource

import torch
from torch import nn

# Dense bf16 peak of known accelerators, for model-FLOPs utilisation (vendor data sheets: half
# the "with sparsity" figure). The first key found in the device name wins, so the PCIe and NVL
# boards come before their SXM namesakes, and L40S / L40 before L4.
_PEAK_FLOPS = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "H200 NVL": 835e12,
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "A10": 125e12,
}


def weight_norm(model: nn.Module) -> float:
    """The global L2 norm of all parameters (gathered across ranks for FSDP shards)."""
    with torch.no_grad():
        squares = [p.detach().float().pow(2).sum() for p in model.parameters()]
        # Under FSDP each sum covers this rank's shard only: gather the full value.
        squares = [getattr(sq, "full_tensor", lambda sq=sq: sq)() for sq in squares]
        return math.sqrt(sum(float(sq) for sq in squares))


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux (bytes on macOS); this is the process's peak resident set.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def flops_per_token(model: nn.Module) -> float | None:
    custom = getattr(model, "flops_per_token", None)
    if callable(custom):
        return float(custom())
    config = getattr(model, "config", None)
    needed = ("n_layer", "d_model", "block_size")
    if config is None or not all(hasattr(config, name) for name in needed):
        return None
    n_params = sum(p.numel() for p in model.parameters())
    # 6N for the matmuls of forward+backward plus 12 L d T for attention (PaLM, appendix B).
    return 6 * n_params + 12 * config.n_layer * config.d_model * config.block_size


def peak_flops(device: torch.device) -> float | None:
    """The dense bf16 peak FLOP/s of a known CUDA device, else None (CPUs, unknown GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in _PEAK_FLOPS.items():
        if key in name:
            return flops
    return None

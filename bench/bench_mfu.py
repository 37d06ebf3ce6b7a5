"""Model FLOPs utilisation (MFU) of a bf16 training step of a GPT-2-small-sized model on one GPU.

The kit's `GPT` at GPT-2 small's shape (12 layers, 12 heads, d 768, ff 3072, block 1024, vocab
50,304: 124 M parameters), trained as `Trainer` runs it with `precision="bf16"`: forward under
bfloat16 autocast (float32 weights and AdamW state), SDPA attention, gradient clipping at 1.0,
the kit's AdamW (fused on CUDA). Each mode ("eager", "compiled" = `torch.compile(model)`) gets
warm-up steps (compiling happens there) and then timed steps, with the device synchronised
around the timer.

    MFU = GPT.flops_per_token() x tokens/s / the device's dense bf16 peak

`flops_per_token` is 6 N + 12 L C T (PaLM, appendix B; see docs/models.md), and the peak comes
from the same table the Trainer uses for its `mfu` metric (`trainer._monitor.peak_flops`), or
from `--peak-tflops`. Prints one JSON object.

    python bench/bench_mfu.py                  # on a GPU: batch 16 x 1024, eager and compiled
    python bench/bench_mfu.py --modes compiled --batch 32
    python bench/bench_mfu.py --quick          # a tiny config on any device, seconds
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import torch
from _measure import environment, median

from transformer_kit.models import GPT, GPTConfig
from transformer_kit.optim import build_optimizer
from transformer_kit.trainer._monitor import peak_flops

__all__ = ["main"]

# GPT-2 small (Radford et al. 2019), with the vocabulary padded from 50,257 to a multiple of 64.
GPT2_SMALL = {"n_layer": 12, "n_head": 12, "d_model": 768, "d_ff": 3072, "block_size": 1024}
GPT2_VOCAB = 50_304
QUICK = {"n_layer": 2, "n_head": 2, "d_model": 32, "d_ff": 128, "block_size": 32}
QUICK_VOCAB = 100
_LR = 6e-4
_CLIP = 1.0


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Run the benchmark, print its JSON result to stdout and return it."""
    args = _parse(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shape, vocab = (QUICK, QUICK_VOCAB) if args.quick else (GPT2_SMALL, GPT2_VOCAB)
    batch = args.batch or (2 if args.quick else 16)
    steps = args.steps or (2 if args.quick else 30)
    warmup = args.warmup or (1 if args.quick else 5)
    modes = ["eager"] if args.quick else args.modes.split(",")
    unknown = sorted(set(modes) - {"eager", "compiled"})
    if unknown:
        raise SystemExit(f"bench_mfu: --modes takes eager and/or compiled, got {unknown}")
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(device)
    result: dict[str, object] = {
        "benchmark": "mfu",
        "environment": environment(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "shape": shape,
        "vocab_size": vocab,
        "batch": batch,
        "tokens_per_step": batch * shape["block_size"],
        "precision": "bf16 autocast",
        "peak_flops": peak,
        "target_mfu": 0.40,
        "modes": {
            mode: _bench_mode(mode, shape, vocab, batch, steps, warmup, device, peak)
            for mode in modes
        },
    }
    print(json.dumps(result, indent=2))
    return result


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny config, eager, for the tests")
    parser.add_argument("--device", default="", help="default: cuda when available, else cpu")
    parser.add_argument("--modes", default="eager,compiled", help="eager and/or compiled")
    parser.add_argument("--batch", type=int, default=0, help="sequences per step (default 16)")
    parser.add_argument("--steps", type=int, default=0, help="timed steps (default 30)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed first steps (default 5)")
    parser.add_argument(
        "--peak-tflops", type=float, default=0.0, help="dense bf16 peak; default: known GPUs"
    )
    return parser.parse_args(argv)


def _bench_mode(
    mode: str,
    shape: dict[str, int],
    vocab: int,
    batch: int,
    steps: int,
    warmup: int,
    device: torch.device,
    peak: float | None,
) -> dict[str, object]:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=vocab, pad_id=None, **shape)
    model = GPT(config).to(device)
    optimizer = build_optimizer(model, "adamw", lr=_LR)
    run = torch.compile(model) if mode == "compiled" else model
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(vocab, (batch, shape["block_size"] + 1), generator=generator)
    ids, targets = tokens[:, :-1].to(device), tokens[:, 1:].to(device)  # (B, T) each

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = run(ids, targets).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), _CLIP)
        optimizer.step()
        return float(loss.detach())  # a sync, once per step, as a logged loss would be

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    warmup_seconds = time.perf_counter() - start
    seconds = []
    losses = []
    for _ in range(steps):
        start = time.perf_counter()
        losses.append(step())
        _sync(device)
        seconds.append(time.perf_counter() - start)
    step_seconds = median(seconds)
    tokens_per_s = batch * shape["block_size"] / step_seconds
    flops = model.flops_per_token()
    return {
        "parameters": model.num_parameters(),
        "flops_per_token": flops,
        "warmup_seconds": warmup_seconds,
        "step_ms_median": step_seconds * 1e3,
        "step_ms_min": min(seconds) * 1e3,
        "tokens_per_s": tokens_per_s,
        "model_tflops_per_s": flops * tokens_per_s / 1e12,
        "mfu": flops * tokens_per_s / peak if peak else None,
        "peak_memory_gib": (
            torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        ),
        "first_and_last_loss": [losses[0], losses[-1]],
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()

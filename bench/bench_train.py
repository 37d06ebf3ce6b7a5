"""Training throughput and peak memory: the kit's GPT + AdamW vs the plain reference GPT.

One training step is forward + backward + optimizer step on a fixed batch of random token ids.
Three sides start from the same weights and are timed interleaved:

- ours: `GPT` with `optim.build_optimizer(model, "adamw")` (fused AdamW on CPU), as the Trainer
  builds them;
- ours_compiled: the same under `torch.compile(model)`, as `TrainerConfig(compile=True)` runs
  it; its compile time (cold inductor cache) is reported apart;
- reference: `reference_gpt.ReferenceGPT` with plain `torch.optim.AdamW`.

`--precision bf16` runs every side's forward under `torch.autocast(dtype=torch.bfloat16)`, as
`TrainerConfig(precision="bf16")` does; float32 weights and optimizer on both sides.

Prints one JSON object.

    python bench/bench_train.py --threads 1  # the two configs of the issue, a few minutes
    python bench/bench_train.py --quick      # a tiny config, no compile, seconds
    python bench/bench_train.py --precision bf16 --no-memory  # both sides under bf16 autocast
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence

import torch
from _measure import environment, interleaved, median, peak_rss_mib, run_memory_case
from reference_gpt import ReferenceGPT, load_kit_state_dict
from torch import Tensor, nn

from transformer_kit.models import GPT, GPTConfig
from transformer_kit.optim import build_optimizer

__all__ = ["main"]

# A character-level vocabulary: the 95 printable ASCII characters, newline and a few specials.
VOCAB_SIZE = 100
# The configs of the issue: "0.8M" and "~4.3M" (their parameter counts are reported as measured).
CONFIGS = {
    "small": {
        "n_layer": 4,
        "n_head": 4,
        "d_model": 128,
        "d_ff": 512,
        "block_size": 64,
        "batch": 12,
    },
    "medium": {
        "n_layer": 4,
        "n_head": 8,
        "d_model": 256,
        "d_ff": 1024,
        "block_size": 256,
        "batch": 16,
    },
}
QUICK_CONFIGS = {
    "tiny": {"n_layer": 2, "n_head": 2, "d_model": 32, "d_ff": 128, "block_size": 16, "batch": 4}
}
# Steps per timed measurement, chosen so one measurement takes about a second here.
STEPS = {"small": 20, "medium": 4, "tiny": 3}
_LR = 3e-4
_MEMORY_STEPS = 3  # the first step allocates AdamW's state, so the peak includes it


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Run the benchmark, print its JSON result to stdout and return it."""
    args = _parse(argv)
    if args.memory_case:
        name, side = args.memory_case.split(":")
        peak = _memory_case(_all_configs()[name], side, args.precision)
        print(json.dumps({"peak_mib": peak}))
        return {"peak_mib": peak}
    torch.set_num_threads(args.threads or torch.get_num_threads())
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    repeats = 2 if args.quick else args.repeats
    compiled = not (args.quick or args.no_compile)
    result: dict[str, object] = {"benchmark": "train", "environment": environment()}
    result["vocab_size"] = VOCAB_SIZE
    result["repeats"] = repeats
    result["memory_method"] = (
        "in-process VmHWM delta (--quick)" if args.quick else "fresh process per case, VmHWM delta"
    )
    result["target_ratio"] = 1.3
    result["precision"] = args.precision
    # A fresh inductor cache, so the compile time is that of a first run, not a cache hit.
    with tempfile.TemporaryDirectory(prefix="bench_inductor_") as cache_dir:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", cache_dir)
        result["configs"] = {
            name: _bench_config(
                name,
                shape,
                repeats,
                memory=not args.no_memory,
                fresh_process=not args.quick,
                compiled=compiled,
                precision=args.precision,
            )
            for name, shape in configs.items()
        }
    print(json.dumps(result, indent=2))
    return result


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny config, for the tests")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing repeats")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled side")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: every side's forward under bfloat16 autocast (weights stay float32)",
    )
    parser.add_argument("--memory-case", default="", help=argparse.SUPPRESS)  # "config:side"
    return parser.parse_args(argv)


def _all_configs() -> dict[str, dict[str, int]]:
    return {**CONFIGS, **QUICK_CONFIGS}


def _build(shape: dict[str, int], side: str) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model and optimizer of one side; both sides start from the kit's seeded weights."""
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=VOCAB_SIZE,
        block_size=shape["block_size"],
        n_layer=shape["n_layer"],
        n_head=shape["n_head"],
        d_model=shape["d_model"],
        d_ff=shape["d_ff"],
        pad_id=None,  # every target counts, as in the reference's loss
    )
    ours = GPT(config)
    if side == "ours":
        return ours, build_optimizer(ours, "adamw", lr=_LR)
    reference = ReferenceGPT(
        vocab_size=VOCAB_SIZE,
        block_size=shape["block_size"],
        n_layer=shape["n_layer"],
        n_head=shape["n_head"],
        d_model=shape["d_model"],
        d_ff=shape["d_ff"],
    )
    load_kit_state_dict(reference, ours.state_dict())
    # Plain AdamW over every parameter, with the kit's betas and weight decay.
    return reference, torch.optim.AdamW(
        reference.parameters(), lr=_LR, betas=(0.9, 0.95), weight_decay=0.1
    )


def _batches(shape: dict[str, int], n: int = 4) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(1)
    size = (shape["batch"], shape["block_size"] + 1)
    batches = []
    for _ in range(n):
        tokens = torch.randint(VOCAB_SIZE, size, generator=generator)  # (B, T + 1)
        batches.append((tokens[:, :-1], tokens[:, 1:]))
    return batches


def _train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[tuple[Tensor, Tensor]],
    precision: str = "fp32",
) -> Callable[[int], float]:
    """A function that runs n training steps and returns the seconds they took."""
    bf16 = precision == "bf16"

    def run(n: int) -> float:
        start = time.perf_counter()
        for step in range(n):
            ids, targets = batches[step % len(batches)]
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(ids, targets)[1]
            loss.backward()
            optimizer.step()
        return time.perf_counter() - start

    return run


def _bench_config(
    name: str,
    shape: dict[str, int],
    repeats: int,
    *,
    memory: bool,
    fresh_process: bool,
    compiled: bool,
    precision: str = "fp32",
) -> dict[str, object]:
    batches = _batches(shape)
    sides = {side: _build(shape, side) for side in ("ours", "reference")}
    runs = {
        side: _train_steps(model, opt, batches, precision) for side, (model, opt) in sides.items()
    }
    for run in runs.values():
        run(2)  # warm-up: allocator, AdamW state, kernel selection
    compile_seconds = None
    if compiled:
        model, optimizer = _build(shape, "ours")
        # What TrainerConfig(compile=True) does: the Trainer calls torch.compile on the model.
        runs["ours_compiled"] = _train_steps(torch.compile(model), optimizer, batches, precision)
        # The first step compiles forward and backward; the second checks nothing recompiles.
        compile_seconds = runs["ours_compiled"](2) - runs["ours"](2)
    steps = STEPS[name]
    seconds = interleaved(
        {side: lambda run=run: run(steps) for side, run in runs.items()}, repeats=repeats
    )
    tokens = steps * shape["batch"] * shape["block_size"]
    tokens_per_s = {side: [tokens / s for s in values] for side, values in seconds.items()}
    # The median of per-repeat ratios pairs runs made side by side: the number to quote.
    ratios = {
        side: median([o / r for o, r in zip(values, tokens_per_s["reference"], strict=True)])
        for side, values in tokens_per_s.items()
        if side != "reference"
    }
    result: dict[str, object] = {
        "shape": shape,
        "parameters": {
            side: sum(p.numel() for p in model.parameters()) for side, (model, _) in sides.items()
        },
        "tokens_per_step": shape["batch"] * shape["block_size"],
        "steps_per_measurement": steps,
        "tokens_per_s": {side: median(values) for side, values in tokens_per_s.items()},
        "tokens_per_s_all": tokens_per_s,
        "ratio": ratios["ours"],
        "ratio_compiled": ratios.get("ours_compiled"),
        "ratio_of_medians": median(tokens_per_s["ours"]) / median(tokens_per_s["reference"]),
        "compile_seconds": compile_seconds,
    }
    if memory:
        peaks = {
            side: _peak(name, side, fresh_process, precision) for side in ("ours", "reference")
        }
        result["peak_mib"] = peaks
        # A tiny --quick model can stay within pages already resident: a peak of 0 MiB.
        result["memory_ratio"] = peaks["ours"] / peaks["reference"] if peaks["reference"] else None
    return result


def _peak(name: str, side: str, fresh_process: bool, precision: str) -> float:
    """Peak MiB of one side's training steps; --quick measures in this process to stay fast."""
    if fresh_process:
        args = ["--memory-case", f"{name}:{side}", "--precision", precision]
        return run_memory_case(__file__, args)
    return _memory_case(_all_configs()[name], side, precision)


def _memory_case(shape: dict[str, int], side: str, precision: str = "fp32") -> float:
    # Warm up on a tiny model of the same side first, so that the library code and kernels that a
    # first step pages in are not counted as this config's memory.
    tiny = _build(QUICK_CONFIGS["tiny"], side)
    _train_steps(*tiny, _batches(QUICK_CONFIGS["tiny"]), precision)(2)
    del tiny
    model, optimizer = _build(shape, side)
    run = _train_steps(model, optimizer, _batches(shape), precision)
    return peak_rss_mib(lambda: run(_MEMORY_STEPS))


if __name__ == "__main__":
    main()

"""Generation speed and peak memory: the kit with and without its KV cache vs plain recompute.

Greedy decoding of 1000 new tokens at batch 1 from a 4-layer, d=256 GPT with block 1024. The
cases, timed interleaved in one process from the same weights:

- ours_cached: `sampling.generate(model, ids, n, temperature=0, num_threads=1)`, the documented
  exact fast path (KV cache, inference mode, one intra-op thread at batch 1);
- ours_cached_float16: the same on `models.pack_float16_linears(model)`, whose Linear
  weights are rounded to float16 (approximate: token and logit agreement are reported);
- ours_cached_2threads: ours_cached with `num_threads=2`, to show what the thread count does;
- ours_recompute: `generate(..., use_cache=False)`, at the process's threads;
- reference_recompute: `reference_gpt.generate_recompute`, the plain model rerun on the whole
  cropped context per token, at the process's threads.

    python bench/bench_generate.py --threads 1   # several minutes: recompute is slow
    python bench/bench_generate.py --quick       # a tiny model, seconds
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence

import torch
from _measure import environment, interleaved, median, peak_rss_mib, run_memory_case
from reference_gpt import ReferenceGPT, generate_recompute, load_kit_state_dict
from torch import Tensor, nn

from transformer_kit.models import GPT, GPTConfig, pack_float16_linears
from transformer_kit.sampling import generate

__all__ = ["main"]

# A character-level vocabulary: the 95 printable ASCII characters, newline and a few specials.
VOCAB_SIZE = 100
SHAPES = {
    "full": {"n_layer": 4, "n_head": 8, "d_model": 256, "d_ff": 1024, "block_size": 1024},
    "tiny": {"n_layer": 2, "n_head": 2, "d_model": 32, "d_ff": 128, "block_size": 64},
}
# Prompt + new tokens fit in the block, so no case ever crops or slides its window.
LENGTHS = {"full": (16, 1000), "tiny": (4, 40)}
CACHED = ("ours_cached", "ours_cached_float16", "ours_cached_2threads")
RECOMPUTE = ("ours_recompute", "reference_recompute")
CASES = CACHED + RECOMPUTE
TARGET_SPEEDUP = 10.0
TARGET_SECONDS = 2.0


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Run the benchmark, print its JSON result to stdout and return it."""
    args = _parse(argv)
    name = "tiny" if args.quick else "full"
    if args.memory_case:
        peak = _memory_case(name, args.memory_case)
        print(json.dumps({"peak_mib": peak}))
        return {"peak_mib": peak}
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 2 if args.quick else args.repeats
    runs, tokens = {}, {}
    for case in CASES:
        runs[case], tokens[case] = _case(name, case)
    # Recompute runs take minutes each, so they get their own (smaller) number of repeats.
    seconds = interleaved({case: runs[case] for case in CACHED}, repeats=repeats)
    recompute_repeats = 1 if args.quick else args.recompute_repeats
    seconds |= interleaved({case: runs[case] for case in RECOMPUTE}, repeats=recompute_repeats)
    cached, float16, two_threads, recompute, reference = (median(seconds[c]) for c in CASES)

    def agree(a: str, b: str) -> dict[str, object]:
        return _agreement(tokens[a][0], tokens[b][0], LENGTHS[name][0])

    result: dict[str, object] = {
        "benchmark": "generate",
        "environment": environment(),
        "vocab_size": VOCAB_SIZE,
        "shape": SHAPES[name],
        "parameters": sum(p.numel() for p in _models(name)[0].parameters()),
        "prompt_tokens": LENGTHS[name][0],
        "new_tokens": LENGTHS[name][1],
        "batch": 1,
        "repeats": {"cached": repeats, "recompute": recompute_repeats},
        "seconds": {
            "ours_cached": cached,
            "ours_cached_float16": float16,
            "ours_cached_2threads": two_threads,
            "ours_recompute": recompute,
            "reference": reference,
        },
        "seconds_all": seconds,
        "speedup_cached_vs_reference": reference / cached,
        "speedup_cached_vs_ours_recompute": recompute / cached,
        "ours_recompute_vs_reference": reference / recompute,
        # Paired per repeat, as the training benchmark quotes its ratios.
        "speedup_float16_vs_cached": _paired(seconds, "ours_cached", "ours_cached_float16"),
        "speedup_1thread_vs_2threads": _paired(seconds, "ours_cached_2threads", "ours_cached"),
        "targets": {"speedup": TARGET_SPEEDUP, "cached_seconds": TARGET_SECONDS},
        "tokens_agree": {
            "cached_vs_recompute": agree("ours_cached", "ours_recompute"),
            "ours_vs_reference": agree("ours_recompute", "reference_recompute"),
            "float16_vs_float32": agree("ours_cached_float16", "ours_cached"),
        },
        "float16_logits": _logit_drift(name, tokens["ours_cached"][0]),
    }
    if not args.no_memory:
        peaks = {case: _peak(case, quick=args.quick) for case in CASES}
        result["memory_method"] = (
            "in-process VmHWM delta (--quick)"
            if args.quick
            else "fresh process per case, VmHWM delta"
        )
        result["peak_mib"] = peaks
    print(json.dumps(result, indent=2))
    return result


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, for the tests")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the cached cases")
    parser.add_argument(
        "--recompute-repeats", type=int, default=1, help="repeats of the recompute cases"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--memory-case", default="", choices=("", *CASES), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _models(name: str) -> tuple[GPT, ReferenceGPT]:
    """The kit's seeded GPT and the reference holding the same weights, both in eval mode."""
    shape = SHAPES[name]
    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=VOCAB_SIZE, pad_id=None, **shape))
    reference = ReferenceGPT(vocab_size=VOCAB_SIZE, **shape)
    load_kit_state_dict(reference, ours.state_dict())
    return ours.eval(), reference.eval()


def _prompt(name: str, length: int) -> Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(VOCAB_SIZE, (1, length), generator=generator)  # (1, P)


def _decoder(
    name: str, case: str, *, prompt_tokens: int | None = None, new_tokens: int | None = None
) -> Callable[[], Tensor]:
    """A function that generates the new tokens of `case` and returns the whole sequence."""
    ours, reference = _models(name)
    ids = _prompt(name, prompt_tokens or LENGTHS[name][0])
    n = LENGTHS[name][1] if new_tokens is None else new_tokens
    if case == "reference_recompute":
        return lambda: generate_recompute(reference, ids, n)
    if case == "ours_recompute":
        return lambda: generate(ours, ids, n, temperature=0.0, use_cache=False)
    model: nn.Module = pack_float16_linears(ours) if case == "ours_cached_float16" else ours
    threads = 2 if case == "ours_cached_2threads" else 1
    return lambda: generate(model, ids, n, temperature=0.0, num_threads=threads)


@torch.no_grad()
def _generate_cached(model: GPT, ids: Tensor, max_new_tokens: int) -> Tensor:
    """Greedy decoding with the kit's KV cache: prefill the prompt, then one token per call."""
    cache = model.new_cache(ids.size(0), max_length=ids.size(1) + max_new_tokens)
    logits = model(ids, cache=cache).logits[:, -1]  # (B, V)
    out = [ids]
    for step in range(max_new_tokens):
        token = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
        out.append(token)
        if step + 1 < max_new_tokens:
            logits = model(token, cache=cache).logits[:, -1]  # (B, V)
    return torch.cat(out, dim=1)  # (B, P + n)


def _case(name: str, case: str) -> tuple[Callable[[], float], list[Tensor]]:
    """A timing function for `case` (seconds per call) and the list its outputs go to."""
    _decoder(name, case, new_tokens=8)()  # warm-up: kernels, allocator, lazy inits
    decode = _decoder(name, case)
    outputs: list[Tensor] = []

    def run() -> float:
        start = time.perf_counter()
        outputs.append(decode())
        return time.perf_counter() - start

    return run, outputs


def _paired(seconds: dict[str, list[float]], slow: str, fast: str) -> float:
    """The median over repeats of `slow / fast`, each ratio from runs made side by side."""
    return median([s / f for s, f in zip(seconds[slow], seconds[fast], strict=True)])


def _agreement(a: Tensor, b: Tensor, prompt: int) -> dict[str, object]:
    """Whether two greedy outputs match, where they part, and the share of equal new tokens."""
    differ = (a != b).nonzero()
    first = int(differ[0, 1]) if len(differ) else a.size(1)
    return {
        "equal": bool(torch.equal(a, b)),
        "first_difference": first,
        "identical_fraction": float((a[:, prompt:] == b[:, prompt:]).float().mean()),
    }


def _logit_drift(name: str, sequence: Tensor) -> dict[str, float]:
    """How far float16 Linear weights move the logits along one float32 greedy sequence.

    Both models read the same tokens (teacher forcing), so the difference is that of the
    weights alone, not of two sequences that went apart.
    """
    ours, _ = _models(name)
    with torch.inference_mode():
        exact = ours(sequence).logits  # (1, L, V)
        approximate = pack_float16_linears(ours)(sequence).logits  # (1, L, V)
    top2 = exact.topk(2, dim=-1).values  # (1, L, 2)
    return {
        "max_abs_diff": float((approximate - exact).abs().max()),
        "logit_std": float(exact.std()),
        # Greedy choices this close can flip under the drift above.
        "median_top2_gap": float((top2[..., 0] - top2[..., 1]).median()),
    }


def _peak(case: str, *, quick: bool) -> float:
    """Peak MiB of one generation; --quick measures in this process to stay fast."""
    if quick:
        return _memory_case("tiny", case)
    return run_memory_case(__file__, ["--memory-case", case])


def _memory_case(name: str, case: str) -> float:
    # Warm up on the tiny model first, so pages of library code a first call touches are not
    # counted as this model's memory.
    _decoder("tiny", case)()
    if case.startswith("ours_cached"):
        decode = _decoder(name, case)
    else:
        # A recompute step holds only its own forward pass, so its peak is that of the longest
        # context: one step from a prompt of P + n - 1 tokens, without the n - 1 slower ones.
        prompt, n = LENGTHS[name]
        decode = _decoder(name, case, prompt_tokens=prompt + n - 1, new_tokens=1)
    return peak_rss_mib(decode)


if __name__ == "__main__":
    main()

"""Decoding options tried for batch-1 greedy generation on CPU, kept or not by measurement.

The model and prompt of bench_generate.py (4 layers, d=256, block 1024, vocab 100). Prints one
JSON object with, each timed interleaved in one process:

- linear_kernels: milliseconds for the 16 block Linears of one token, each weight read once in
  turn (as in decoding, so they stream from cache or memory), with float32 `F.linear`,
  `torch.addmv`, fbgemm's float16 kernel (`Float16Linear`) and `torch.ops.aten.
  _weight_int8pack_mm` with float32 and with bfloat16 activations;
- generate: seconds for the new tokens with `generate(..., num_threads=1)` on the float32 model,
  on `pack_float16_linears(model)`, and on an int8 weight-only copy (per-output-channel scales,
  bfloat16 activations: the only fast input type of `_weight_int8pack_mm` here), with token
  agreement and logit drift against float32;
- static_step: a one-token step over the whole preallocated cache with a length mask, so that
  every shape is fixed, eager and under `torch.compile(fullgraph=True, dynamic=False)`, with the
  compile time; the greedy loop around it is the same for both.

    python bench/bench_decode_options.py --threads 1             # about 8 minutes
    python bench/bench_decode_options.py --quick                 # a tiny model, no compile
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from _measure import environment, interleaved, median
from bench_generate import LENGTHS, _agreement, _models, _prompt
from torch import Tensor, nn

from transformer_kit.models import GPT
from transformer_kit.models.layers import Float16Linear, pack_float16_linears
from transformer_kit.sampling import generate

__all__ = ["main"]

# Shapes: B batch (1), L cache slots (block_size), C d_model, H heads, D head dim, V vocab.

# Symmetric int8: weights in [-127, 127] times a per-row scale (absmax / 127).
_INT8_MAX = 127


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Run the measurements, print their JSON result to stdout and return it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, no compile, for tests")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing repeats")
    parser.add_argument("--new-tokens", type=int, default=0, help="0: bench_generate's count")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled step")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = "tiny" if args.quick else "full"
    repeats = 1 if args.quick else args.repeats
    n = args.new_tokens or LENGTHS[name][1]
    model = _models(name)[0]
    ids = _prompt(name, LENGTHS[name][0])
    result: dict[str, object] = {"benchmark": "decode_options", "environment": environment()}
    result["model"] = name
    result["linear_kernels_ms"] = _linear_kernels(model, repeats)
    result["generate"] = _generate_variants(model, ids, n, repeats)
    result["static_step"] = _static_step(model, ids, n, repeats, args.quick or args.no_compile)
    print(json.dumps(result, indent=2))
    return result


class _Int8Linear(nn.Module):
    """Weight-only int8 Linear: `_weight_int8pack_mm` on bfloat16 activations, float32 out."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / _INT8_MAX  # (out,)
        self.weight = (weight / scale[:, None]).round().clamp(-_INT8_MAX, _INT8_MAX).to(torch.int8)
        self.scale = scale.to(torch.bfloat16)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)  # (N, in)
        y = torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.scale).float()
        y = y.view(*x.shape[:-1], -1)  # (..., out)
        return y if self.bias is None else y + self.bias


def _int8_copy(model: GPT) -> GPT:
    quantized = copy.deepcopy(model)
    for block in quantized.blocks:
        for parent in (block.attn, block.mlp):
            for name in ("qkv", "proj", "fc"):
                child = getattr(parent, name, None)
                if isinstance(child, nn.Linear):
                    setattr(parent, name, _Int8Linear(child))
    return quantized


def _linear_kernels(model: GPT, repeats: int) -> dict[str, float]:
    layers = [m for m in model.blocks.modules() if isinstance(m, nn.Linear)]  # 16
    inputs = {n: torch.randn(1, 1, n) for n in {m.in_features for m in layers}}
    half = [Float16Linear(m) for m in layers]
    int8 = [_Int8Linear(m) for m in layers]
    tokens = 50  # passes over all 16 weights per measurement

    def timed(step: Callable[[], object]) -> Callable[[], float]:
        def run() -> float:
            start = time.perf_counter()
            for _ in range(tokens):
                step()
            return (time.perf_counter() - start) / tokens * 1e3

        return run

    def int8_float32() -> None:
        for m in int8:
            x = inputs[m.weight.shape[1]].view(1, -1)
            torch.ops.aten._weight_int8pack_mm(x, m.weight, m.scale.float())

    cases = {
        "float32_linear": timed(
            lambda: [F.linear(inputs[m.in_features], m.weight, m.bias) for m in layers]
        ),
        "float32_addmv": timed(
            lambda: [torch.addmv(m.bias, m.weight, inputs[m.in_features].view(-1)) for m in layers]
        ),
        "float16_fbgemm": timed(lambda: [m(inputs[m.in_features]) for m in half]),
        "int8pack_bfloat16_inputs": timed(lambda: [m(inputs[m.weight.shape[1]]) for m in int8]),
        "int8pack_float32_inputs": timed(int8_float32),
    }
    with torch.inference_mode():
        for run in cases.values():
            run()  # warm-up
        times = interleaved(cases, repeats=repeats)
    return {name: median(values) for name, values in times.items()}


def _generate_variants(model: GPT, ids: Tensor, n: int, repeats: int) -> dict[str, object]:
    models = {"float32": model, "float16": pack_float16_linears(model), "int8": _int8_copy(model)}
    outputs: dict[str, Tensor] = {}

    def runner(name: str) -> Callable[[], float]:
        def run() -> float:
            start = time.perf_counter()
            outputs[name] = generate(models[name], ids, n, temperature=0.0, num_threads=1)
            return time.perf_counter() - start

        return run

    cases = {name: runner(name) for name in models}
    for run in cases.values():
        run()  # warm-up
    seconds = interleaved(cases, repeats=repeats)
    result: dict[str, object] = {
        "new_tokens": n,
        "seconds": {k: median(v) for k, v in seconds.items()},
    }
    with torch.inference_mode():
        exact = model(outputs["float32"]).logits  # teacher-forced on the float32 tokens
        for name in ("float16", "int8"):
            drift = (models[name](outputs["float32"]).logits - exact).abs().max()
            result[name] = {
                "speedup_vs_float32": median(
                    [f / o for f, o in zip(seconds["float32"], seconds[name], strict=True)]
                ),
                "tokens": _agreement(outputs[name], outputs["float32"], ids.size(1)),
                "max_abs_logit_diff": float(drift),
            }
    return result


def _static_step(
    model: GPT, ids: Tensor, n: int, repeats: int, no_compile: bool
) -> dict[str, object]:
    """A fixed-shape one-token step (default GPT variants only) and a greedy loop around it."""
    config = model.config
    L, H, D = config.block_size, config.n_head, config.head_dim
    slots = torch.arange(L)  # (L,)

    def step(token: Tensor, position: Tensor, keys: list[Tensor], values: list[Tensor]) -> Tensor:
        x = model.tok_emb(token) + model.pos_emb(position)  # (1, 1, C)
        mask = (slots <= position).view(1, 1, 1, L)  # the filled slots, this one included
        for block, k_cache, v_cache in zip(model.blocks, keys, values, strict=True):
            qkv = block.attn.qkv(block.norm_1(x)).view(1, 1, 3 * H, D).transpose(1, 2)
            q, k, v = qkv.split(H, dim=1)  # each (1, H, 1, D)
            k_cache.index_copy_(2, position, k)
            v_cache.index_copy_(2, position, v)
            y = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask)  # (1, H, 1, D)
            x = x + block.attn.proj(y.reshape(1, 1, H * D))
            x = x + block.mlp(block.norm_2(x))
        return model.head(model.norm_f(x))[:, -1]  # (1, V)

    def greedy(one_step: Callable[..., Tensor]) -> Tensor:
        keys = [torch.zeros(1, H, L, D) for _ in model.blocks]  # (1, H, L, D) each
        values = [torch.zeros(1, H, L, D) for _ in model.blocks]
        tokens = ids[0].tolist()
        for position in range(ids.size(1) + n - 1):  # the prompt one token at a time, then n
            logits = one_step(
                torch.tensor([[tokens[position]]]), torch.tensor([position]), keys, values
            )
            if position + 1 >= ids.size(1):
                tokens.append(int(logits.argmax()))
        return torch.tensor([tokens])

    result: dict[str, object] = {}
    cases: dict[str, Callable[[], float]] = {}
    outputs: dict[str, Tensor] = {}

    def timed(name: str, one_step: Callable[..., Tensor]) -> Callable[[], float]:
        def run() -> float:
            start = time.perf_counter()
            with torch.inference_mode():
                outputs[name] = greedy(one_step)
            return time.perf_counter() - start

        return run

    cases["eager"] = timed("eager", step)
    if not no_compile:
        compiled = torch.compile(step, fullgraph=True, dynamic=False)
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(torch.tensor([[1]]), torch.tensor([0]), *_empty_cache(model))
        result["compile_seconds"] = time.perf_counter() - start
        cases["compiled"] = timed("compiled", compiled)
    cases["eager"]()  # warm-up
    seconds = interleaved(cases, repeats=repeats)
    result["seconds"] = {name: median(values) for name, values in seconds.items()}
    if "compiled" in seconds:
        result["speedup_compiled_vs_eager"] = median(
            [e / c for e, c in zip(seconds["eager"], seconds["compiled"], strict=True)]
        )
        result["tokens_agree"] = _agreement(outputs["compiled"], outputs["eager"], ids.size(1))
    return result


def _empty_cache(model: GPT) -> tuple[list[Tensor], list[Tensor]]:
    config = model.config
    shape = (1, config.n_head, config.block_size, config.head_dim)
    return [torch.zeros(shape) for _ in model.blocks], [torch.zeros(shape) for _ in model.blocks]


if __name__ == "__main__":
    main()

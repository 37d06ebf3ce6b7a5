"""The benchmarks compare like with like, and their scripts run and print the JSON they promise.

No timing is asserted here (speed is measured only in bench/): the reference GPT must compute
the kit's function from the kit's weights, and each script's --quick run must finish.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from transformer_kit.models import GPT, GPTConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench_decode_options  # noqa: E402
import bench_generate  # noqa: E402
import bench_mfu  # noqa: E402
import bench_train  # noqa: E402
from reference_gpt import ReferenceGPT, generate_recompute, load_kit_state_dict  # noqa: E402

SHAPE = {"n_layer": 2, "n_head": 4, "d_model": 32, "d_ff": 64, "block_size": 16}


def _pair(vocab_size: int = 50) -> tuple[GPT, ReferenceGPT]:
    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=vocab_size, pad_id=None, **SHAPE)).eval()
    # Scale the weights up so the logits are far from uniform and a mismatch would show.
    with torch.no_grad():
        for param in ours.parameters():
            param.mul_(5.0)
    reference = ReferenceGPT(vocab_size=vocab_size, **SHAPE).eval()
    load_kit_state_dict(reference, ours.state_dict())
    return ours, reference


def test_reference_computes_the_kits_logits_and_loss_from_its_weights():
    ours, reference = _pair()
    ids = torch.randint(50, (3, 16), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(50, (3, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ours(ids, targets)
        logits, loss = reference(ids, targets)
    assert logits.std() > 1.0  # not near-uniform, so equality means something
    torch.testing.assert_close(logits, expected.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss, expected.loss, rtol=1e-5, atol=1e-5)


def test_reference_counts_the_same_parameters_and_ties_its_head():
    ours, reference = _pair()
    assert sum(p.numel() for p in reference.parameters()) == ours.num_parameters()
    assert reference.head.weight is reference.tok_emb.weight


def test_reference_greedy_generation_matches_the_kits_cached_generation():
    ours, reference = _pair()
    ids = torch.tensor([[1, 2, 3]])
    expected = bench_generate._generate_cached(ours, ids, 10)
    assert torch.equal(generate_recompute(reference, ids, 10), expected)


def test_bench_train_quick_prints_its_json(capsys):
    result = bench_train.main(["--quick"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(result))
    assert printed["environment"]["torch"] == torch.__version__
    tiny = printed["configs"]["tiny"]
    assert set(tiny) >= {"tokens_per_s", "ratio", "peak_mib", "parameters", "memory_ratio"}
    # --quick skips the compiled side (compiling takes longer than the whole quick run).
    assert tiny["ratio_compiled"] is None and tiny["compile_seconds"] is None
    assert set(tiny["tokens_per_s"]) == {"ours", "reference"}
    assert all(value > 0 for value in tiny["tokens_per_s"].values())
    assert tiny["parameters"]["ours"] == tiny["parameters"]["reference"]


def test_bench_train_bf16_runs_both_sides_under_autocast(capsys):
    result = bench_train.main(["--quick", "--precision", "bf16"])
    assert result["precision"] == "bf16"
    tiny = result["configs"]["tiny"]
    assert set(tiny["tokens_per_s"]) == {"ours", "reference"}
    assert all(value > 0 for value in tiny["tokens_per_s"].values())


def test_bench_train_steps_use_the_precision_asked_for():
    shape = bench_train.QUICK_CONFIGS["tiny"]
    model, optimizer = bench_train._build(shape, "ours")
    dtypes: list[torch.dtype] = []
    model.head.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    bench_train._train_steps(model, optimizer, bench_train._batches(shape), "bf16")(1)
    bench_train._train_steps(model, optimizer, bench_train._batches(shape), "fp32")(1)
    assert dtypes == [torch.bfloat16, torch.float32]


def test_bench_generate_quick_prints_its_json(capsys):
    result = bench_generate.main(["--quick"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(result))
    assert set(printed["seconds"]) == {
        "ours_cached",
        "ours_cached_float16",
        "ours_cached_2threads",
        "ours_recompute",
        "reference",
    }
    assert set(printed["peak_mib"]) == set(bench_generate.CASES)
    assert printed["speedup_cached_vs_reference"] > 0
    # Reported, not asserted: near-uniform logits of a fresh model may tie-break differently on
    # another CPU; the equivalence itself is tested above on sharp logits.
    for pair in ("cached_vs_recompute", "ours_vs_reference", "float16_vs_float32"):
        assert isinstance(printed["tokens_agree"][pair]["equal"], bool)
        assert 0 <= printed["tokens_agree"][pair]["identical_fraction"] <= 1
    # Float16 weights move the logits, but far less than they spread.
    drift = printed["float16_logits"]
    assert 0 < drift["max_abs_diff"] < 0.1 * drift["logit_std"]


def test_bench_decode_options_quick_prints_its_json(capsys):
    result = bench_decode_options.main(["--quick"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(result))
    assert set(printed["linear_kernels_ms"]) == {
        "float32_linear",
        "float32_addmv",
        "float16_fbgemm",
        "int8pack_bfloat16_inputs",
        "int8pack_float32_inputs",
    }
    variants = printed["generate"]
    assert set(variants["seconds"]) == {"float32", "float16", "int8"}
    # int8 weights with bfloat16 activations move the logits far more than float16 weights.
    assert 0 < variants["float16"]["max_abs_logit_diff"] < variants["int8"]["max_abs_logit_diff"]
    assert set(printed["static_step"]["seconds"]) == {"eager"}  # --quick does not compile


@pytest.mark.parametrize("case", bench_generate.CASES)
def test_memory_case_reports_a_peak(case, capsys):
    result = bench_generate.main(["--quick", "--memory-case", case])
    assert json.loads(capsys.readouterr().out) == result
    assert result["peak_mib"] >= 0


def test_bench_mfu_quick_prints_its_json_and_computes_mfu(capsys):
    result = bench_mfu.main(["--quick", "--device", "cpu", "--peak-tflops", "2"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(result))
    assert printed["peak_flops"] == 2e12
    eager = printed["modes"]["eager"]
    config = GPTConfig(vocab_size=bench_mfu.QUICK_VOCAB, pad_id=None, **bench_mfu.QUICK)
    assert eager["flops_per_token"] == GPT(config).flops_per_token()
    seconds = eager["step_ms_median"] / 1e3
    assert eager["tokens_per_s"] == pytest.approx(printed["tokens_per_step"] / seconds)
    assert eager["mfu"] == pytest.approx(eager["flops_per_token"] * eager["tokens_per_s"] / 2e12)
    assert all(math.isfinite(loss) for loss in eager["first_and_last_loss"])


def test_bench_mfu_model_is_gpt2_small_sized():
    config = GPTConfig(vocab_size=bench_mfu.GPT2_VOCAB, pad_id=None, **bench_mfu.GPT2_SMALL)
    with torch.device("meta"):  # shapes only: no 0.5 GB of weights to initialise
        model = GPT(config)
    # 124.4 M with the padded vocabulary and tied head (GPT-2 small: 124 M).
    assert 124.0e6 < model.num_parameters() < 124.6e6

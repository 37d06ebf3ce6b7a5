"""Scoring a music model against held-out pieces, and the report of what it measured."""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transformer_kit.data import TokenDataset, write_midi, write_musicxml
from transformer_kit.metrics import music
from transformer_kit.models import Ensemble, pack_float16_linears
from transformer_kit.recipes.music._run import load_run_model
from transformer_kit.recipes.music._sampler import PieceSampler
from transformer_kit.tokenization.events import Piece

__all__ = [
    "SAMPLE_TOKENS",
    "evaluate_checkpoint",
    "evaluate_music",
    "results_markdown",
    "token_nll",
    "write_results",
]

SAMPLE_TOKENS = 1200
"""`evaluate_music`'s default tokens per sample (`evaluate_checkpoint` names other counts)."""


def token_nll(model: nn.Module, tokens: np.ndarray, *, block_size: int, batch_size: int) -> float:
    """Mean cross-entropy (nats per target token) over `tokens` in non-overlapping windows.

    The windows are `TokenDataset(tokens, block_size).eval_batches(batch_size)`; `model(inputs,
    targets)` must return an object with a `.loss` (mean over its targets), as `GPT` does, and
    each batch counts by its number of targets (a music stream holds no pad ids).

    Raises:
        ValueError: if `tokens` is shorter than one window and its target (`TokenDataset`).
    """
    total = count = 0.0
    with torch.no_grad():
        for inputs, targets in TokenDataset(tokens, block_size).eval_batches(batch_size):
            loss = model(inputs, targets).loss
            total += float(loss) * targets.numel()
            count += targets.numel()
    return total / count


def evaluate_music(
    sampler: PieceSampler,
    *,
    streams: Mapping[str, np.ndarray],
    holdout: Sequence[Piece],
    profile: music.MusicProfile,
    block_size: int,
    batch_size: int,
    out_dir: Path,
    samples: int | None = None,
    tokens: int = SAMPLE_TOKENS,
    sets: int = 1,
    seed: int = 0,
) -> dict[str, object]:
    """Score `sampler.model` against held-out pieces and write 8 of its samples into `out_dir`.

    - `val_loss` and `test_nll`: `token_nll` over ``streams["val"]`` and ``streams["test"]``;
    - `seconds_1000_tokens`: `PieceSampler.timed` (seed + 1), and the same
      for a `pack_float16_linears` copy of the model (`seconds_1000_tokens_float16`; None
      without x86's fbgemm);
    - `samples` pieces (None: as many as `holdout` holds) of up to `tokens` tokens from
      seed + 2, written to samples/ as sample_NN.mid and .musicxml; `overall_score` and
      `interval_bigram_overlap` of them and of `holdout` against `profile`, and
      `percent_of_bach`, the ratio of the two scores. The overlaps of a small set of pieces
      run low (its histograms are noisier), so the ratio is fair only between sets of one
      size: 35 real chorales score 1.2 points more than 32 of them (docs/results.md, "Set
      size");
    - with `sets` > 1, as many more sets of samples (seeds seed + 2 + 1000 k), each scored:
      `percent_of_bach_sets` and their mean.

    Everything is sampled with the sampler's own constraint and temperature; its model (a
    `GPT`, an `Ensemble`, ...) is put in eval mode.
    """
    holdout = list(holdout)
    samples = len(holdout) if samples is None else samples
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"evaluate_music: samples must be None or an int >= 1, got {samples!r}")
    sampler.model.eval()
    losses = {
        split: token_nll(
            sampler.model, streams[split], block_size=block_size, batch_size=batch_size
        )
        for split in ("val", "test")
    }
    one, seconds = sampler.timed(1000, seed=seed + 1)
    seconds_float16 = None
    if "fbgemm" in torch.backends.quantized.supported_engines:
        fast = copy.copy(sampler)
        fast.model = pack_float16_linears(sampler.model)
        seconds_float16 = round(fast.timed(1000, seed=seed + 1)[1], 2)
    ids = sampler.ids(samples, tokens, seed=seed + 2)
    decoded = [sampler.tokenizer.decode(row) for row in [*ids.tolist(), *one.tolist()]]
    kept = [piece for piece in decoded if piece][:samples]
    (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    for i, piece in enumerate(kept[:8]):
        write_midi(piece, out_dir / "samples" / f"sample_{i:02d}.mid")
        write_musicxml(piece, out_dir / "samples" / f"sample_{i:02d}.musicxml")
    bach_score = music.overall_score(holdout, profile)
    scores = [music.overall_score(kept, profile)]
    for k in range(1, sets):
        more = sampler.pieces(samples, tokens, seed=seed + 2 + 1000 * k)
        scores.append(music.overall_score([p for p in more if p], profile))
    percents = [100 * score / bach_score if bach_score else math.nan for score in scores]
    return {
        "val_loss": losses["val"],
        "test_nll": losses["test"],
        "temperature": sampler.temperature,
        "voices": sampler.voices,
        "min_notes": sampler.min_notes,
        "max_notes": _max_notes_text(sampler),
        "top_k": sampler.top_k,
        "seconds_1000_tokens": round(seconds, 2),
        "seconds_1000_tokens_float16": seconds_float16,
        "decodable": sum(1 for p in decoded if p) / len(decoded),
        "samples_per_set": samples,
        "samples": music.corpus_summary(kept),
        "held_out_bach": music.corpus_summary(holdout),
        "overall_score_samples": scores[0],
        "overall_score_bach": bach_score,
        "percent_of_bach": percents[0],
        "percent_of_bach_sets": percents,
        "percent_of_bach_mean": sum(percents) / len(percents),
        "bigram_overlap_samples": music.interval_bigram_overlap(kept, profile),
        "bigram_overlap_bach": music.interval_bigram_overlap(holdout, profile),
    }


def evaluate_checkpoint(
    sampler: PieceSampler,
    run_dirs: Sequence[Path],
    checkpoint: str,
    *,
    streams: Mapping[str, np.ndarray],
    holdout: Sequence[Piece],
    profile: music.MusicProfile,
    block_size: int,
    batch_size: int,
    samples: int = 32,
    tokens: int = SAMPLE_TOKENS,
    sets: int = 1,
    seed: int = 0,
) -> dict[str, object]:
    """Sample a checkpoint of finished runs again, into a new folder of the first run.

    The checkpoint (`"best"`, `"last"`) of each run is loaded with `load_run_model`; several
    runs are sampled as one `Ensemble` (a product of experts). A copy of `sampler`, with its
    settings and that model, goes through `evaluate_music` and `write_results` into
    ``run_dirs[0] / eval_<checkpoint>_t<T>[_k<top_k>]_<rule>[_n<tokens>][_ens<M>-<hash>]``:
    `_n` when `tokens` is not `SAMPLE_TOKENS`, `_ens` for M > 1 runs, the hash naming the other
    runs so that another ensemble does not overwrite this one's folder. The runs' own files are
    left as they were. The results add `steps` (the first run's), `params` (all runs) and
    `ensemble` (the other runs).

    Raises:
        ValueError: if `run_dirs` is empty, or a run's tokenizer differs from the sampler's.
        FileNotFoundError: if a run lacks run.json, tokenizer.json or the checkpoint.
    """
    if not run_dirs:
        raise ValueError("evaluate_checkpoint: run_dirs must name at least one run, got none")
    loaded = [load_run_model(run, checkpoint, sampler.tokenizer) for run in run_dirs]
    models: list[nn.Module] = [model for model, _ in loaded]
    again = copy.copy(sampler)
    again.model = Ensemble(models) if len(models) > 1 else models[0]
    name = f"eval_{checkpoint}_t{sampler.temperature:g}"
    name += "" if sampler.top_k is None else f"_k{sampler.top_k}"
    name += f"_{sampler.rule_name}" + ("" if tokens == SAMPLE_TOKENS else f"_n{tokens}")
    others = [str(run) for run in run_dirs[1:]]
    if others:
        paths = "\n".join(str(run.resolve()) for run in run_dirs[1:])
        name += f"_ens{len(models)}-{hashlib.sha1(paths.encode()).hexdigest()[:6]}"
    folder = run_dirs[0] / name
    results = evaluate_music(
        again, streams=streams, holdout=holdout, profile=profile, block_size=block_size,
        batch_size=batch_size, out_dir=folder, samples=samples, tokens=tokens, sets=sets,
        seed=seed,
    )  # fmt: skip
    params = sum(sum(p.numel() for p in model.parameters()) for model in models)
    results.update(steps=loaded[0][1], train_wall_s=None, params=params, ensemble=others)
    write_results(results, folder)
    return results


def write_results(results: Mapping[str, object], folder: Path) -> str:
    """Write results.json and results.md (`results_markdown`) into `folder`; return the latter."""
    report = results_markdown(results)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (folder / "results.md").write_text(report)
    return report


def results_markdown(results: Mapping[str, object]) -> str:
    """A Markdown table and summary of `evaluate_music`'s results.

    Reads also `steps`, `train_wall_s` (None: not trained in this process) and `params`.
    """
    samples, bach = results["samples"], results["held_out_bach"]
    assert isinstance(samples, dict) and isinstance(bach, dict)
    lines = ["| measure | samples | held-out Bach |", "|---|---|---|"]
    for name in music.METRIC_NAMES:
        key = f"{name}_mean"
        lines.append(f"| {name} (mean) | {samples[key]:.3f} | {bach[key]:.3f} |")
    for key in ("overall_score", "bigram_overlap"):
        lines.append(f"| {key} | {results[f'{key}_samples']:.3f} | {results[f'{key}_bach']:.3f} |")
    sets = results.get("percent_of_bach_sets", [])
    assert isinstance(sets, list)
    spread = ""
    if len(sets) > 1:
        spread = (
            f" (over {len(sets)} sets of samples: mean {sum(sets) / len(sets):.1f}%, "
            f"{min(sets):.1f}-{max(sets):.1f}%)"
        )
    half = results.get("seconds_1000_tokens_float16")
    float16 = "" if half is None else f" ({half} s with float16 Linear weights)"
    wall = results.get("train_wall_s")
    trained = "" if wall is None else f", training {wall} s"
    decodable = results["decodable"]
    assert isinstance(decodable, float)
    lines += [
        "",
        f"- step {results['steps']}{trained}, {results['params']:,} parameters",
        f"- samples drawn at temperature {results['temperature']}, top_k {results['top_k']}, "
        f"constraint --voices {results['voices']}, min_notes {results['min_notes']}, "
        f"max_notes {results.get('max_notes')}",
        f"- val loss {results['val_loss']:.4f}, test NLL {results['test_nll']:.4f} (nats/token)",
        f"- overall score: {results['percent_of_bach']:.1f}% of held-out Bach's{spread}; "
        f"sets of {results.get('samples_per_set', '?')} samples, {bach['pieces']:.0f} held-out",
        f"- 1000 tokens generated in {results['seconds_1000_tokens']} s{float16}; "
        f"decodable {100 * decodable:.0f}%",
    ]
    return "\n".join(lines) + "\n"


def _max_notes_text(sampler: PieceSampler) -> int | str | None:
    """A sampler's `max_notes` for results.json: drawn maxima as a summary, not the list."""
    most = sampler.max_notes
    if not isinstance(most, tuple):
        return most
    mean = sum(most) / len(most)
    return (
        f"drawn from {len(most)} lengths ({min(most)}-{max(most)}, mean {mean:.0f}), "
        f"at least {max(1, sampler.min_notes)}"
    )

"""Train a GPT on the Bach chorales: structured tokens, staged augmentation, musical early stopping.

    python examples/bach.py --out-dir runs/bach --budget-minutes 4    # the README's main job
    python examples/bach.py --out-dir runs/bach --resume              # continue from last.pt
    python examples/bach.py --midi-dir my_midi/ --out-dir runs/mine   # your own MIDI folder
    python examples/bach.py --out-dir runs/bach --evaluate last --temperature 0.8  # sample again
    python examples/bach.py --out-dir runs/a --evaluate best --ensemble runs/b  # two models as one

Needs the `music` extra (music21, for the corpus and MIDI/MusicXML files). Writes into --out-dir:
metrics.jsonl, TensorBoard events (tb/), checkpoints/{last,best}.pt, tokenizer.json, loss.png,
music.png, samples/*.mid and *.musicxml, results.md and results.json. `--evaluate best|last`
trains nothing: it loads that checkpoint, samples it with the sampling flags given and writes
the same samples and results into a new folder, eval_<checkpoint>_t<T>[_k<top_k>]_<rule>[_n<N>]
[_ens<M>-<hash>]/ (rule: fill145, mono0, grammar, ... from --voices and --min-notes; _n<N> when
--sample-tokens is not 1200; _ens<M>-<hash> for an ensemble of M runs, the hash naming
them), leaving the training run's own files as they were. `--ensemble RUN_DIR ...` samples
`models.Ensemble` of this run and those runs (the same checkpoint name in each). Samples are
drawn under `VoiceLeading` (one note per voice at a time, every voice sounding, no <END>
before --min-notes notes; --voices picks a looser constraint), so every sample decodes.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transformer_kit.augment import Compose, PitchShift, RhythmScale, three_stage
from transformer_kit.averaging import inference_weights
from transformer_kit.checkpoint import CheckpointManager
from transformer_kit.data import (
    TokenDataset,
    bach_chorales,
    read_music_folder,
    split_pieces,
    write_midi,
    write_musicxml,
)
from transformer_kit.logging import ConsoleLogger, JSONLLogger, TensorBoardLogger, plot_metrics
from transformer_kit.metrics import music
from transformer_kit.models import (
    GPT,
    BarPositionFeatures,
    Ensemble,
    FeatureSum,
    GPTConfig,
    VoiceStateFeatures,
    pack_float16_linears,
)
from transformer_kit.sampling import generate
from transformer_kit.tokenization import MusicTokenizer, VoiceLeading
from transformer_kit.tokenization.events import Piece
from transformer_kit.trainer import Trainer, TrainerConfig

# What the trained model's shape and its weight average depend on: --evaluate and --resume take
# these from run.json, whatever the command line says.
MODEL_ARGS = (
    "n_layer", "n_head", "d_model", "d_ff", "block_size", "dropout", "voice_features", "ema",
)  # fmt: skip
MONITOR = "music_combined"  # what best.pt is chosen by: 0.3 x loss component + 0.7 x music
SAMPLE_TOKENS = 1200  # default --sample-tokens


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path("runs/bach"))
    parser.add_argument("--midi-dir", type=Path, help="train on this folder instead of Bach")
    parser.add_argument("--cache-dir", type=Path, help="where the parsed corpus is cached")
    parser.add_argument("--budget-minutes", type=float, default=None, help="bound the run")
    parser.add_argument("--max-steps", type=int, default=None, help="default: from the budget")
    parser.add_argument("--evals", type=int, default=8, help="evaluations during the run")
    parser.add_argument("--resume", action="store_true", help="continue from checkpoints/last")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--d-ff", type=int, default=1024)
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument(
        "--ema",
        type=float,
        default=None,
        metavar="DECAY",
        help="evaluate, pick and sample a moving average of the weights (e.g. 0.995)",
    )
    parser.add_argument("--patience", type=int, default=15, help="evaluations without gain")
    parser.add_argument("--rhythm", action="store_true", help="add x2 / x0.5 rhythm scaling")
    parser.add_argument(
        "--voice-features",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also feed the model how long each voice keeps sounding (VoiceStateFeatures; "
        "see docs/results.md for what it changed); --evaluate and --resume follow the run's "
        "own setting",
    )
    parser.add_argument("--eval-samples", type=int, default=4, help="samples per evaluation")
    parser.add_argument("--final-samples", type=int, default=32)
    parser.add_argument(
        "--sample-sets",
        type=int,
        default=1,
        help="score this many sets of --final-samples samples (other seeds) and report their "
        "spread: the score of one set of 32 moves by several points from seed to seed",
    )
    parser.add_argument("--sample-tokens", type=int, default=SAMPLE_TOKENS)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument(
        "--voices",
        choices=["fill", "mono", "grammar"],
        default="fill",
        help="sampling constraint: VoiceLeading with every voice sounding (fill), one note per "
        "voice only (mono), or the tokenizer's grammar alone",
    )
    parser.add_argument(
        "--min-notes",
        type=int,
        default=None,
        help="no <END> before this many notes (VoiceLeading); default: the 5th percentile of "
        "the training pieces' lengths",
    )
    parser.add_argument(
        "--evaluate",
        choices=["best", "last"],
        help="train nothing: sample this checkpoint of --out-dir and write its results",
    )
    parser.add_argument(
        "--ensemble",
        type=Path,
        nargs="+",
        metavar="RUN_DIR",
        help="with --evaluate: sample the product of experts (models.Ensemble, equal weights) "
        "of this run's checkpoint and the same checkpoint of these runs (same tokenizer)",
    )
    args = parser.parse_args(argv)
    if args.sample_sets < 1:
        parser.error(f"--sample-sets must be >= 1, got {args.sample_sets}")
    if args.ensemble and args.evaluate is None:
        parser.error("--ensemble needs --evaluate best|last: it only samples trained runs")
    return args


def load_pieces(args: argparse.Namespace) -> dict[str, list[Piece]]:
    if args.midi_dir is None:
        return bach_chorales(args.cache_dir)
    splits = split_pieces(read_music_folder(args.midi_dir), seed=args.seed)  # 90/5/5 by melody
    empty = [name for name, split in splits.items() if not split]
    if empty:
        raise SystemExit(f"--midi-dir {args.midi_dir}: too few pieces, no {empty} split")
    return splits


def make_tokenizer(pieces: dict[str, list[Piece]], args: argparse.Namespace) -> MusicTokenizer:
    if args.midi_dir is None:
        return MusicTokenizer()  # the defaults cover the chorales and +-2 semitones of shifts
    events = [e for split in pieces.values() for piece in split for e in piece]
    low, high = min(e.pitch for e in events), max(e.pitch for e in events)
    return MusicTokenizer(
        min_pitch=max(0, low - 2), max_pitch=min(127, high + 2), voices=max(e.voice for e in events)
    )


def encode(tokenizer: MusicTokenizer, pieces: Sequence[Piece]) -> np.ndarray:
    """One token stream: every piece from <START> to <END>, back to back."""
    return np.concatenate([np.asarray(tokenizer.encode(p), dtype=np.int64) for p in pieces])


class Sampler:
    """Generates grammatical pieces from <START> with the current model (a fixed seed)."""

    def __init__(self, model: nn.Module, tokenizer: MusicTokenizer, args: argparse.Namespace):
        self.model, self.tokenizer, self.args = model, tokenizer, args
        self.rule = (
            tokenizer.allowed_next
            if args.voices == "grammar"
            else VoiceLeading(tokenizer, fill=args.voices == "fill", min_notes=args.min_notes)
        )
        # Names the constraint in results and --evaluate folders: grammar, fill145, mono0, ...
        self.rule_name = "grammar" if args.voices == "grammar" else f"{args.voices}{args.min_notes}"

    def ids(self, n: int, tokens: int, *, seed: int, stop: bool = True) -> torch.Tensor:
        tok = self.tokenizer
        prompt = torch.full((n, 1), tok.start_id)
        return generate(
            self.model,
            prompt,
            tokens,
            temperature=self.args.temperature,
            top_k=self.args.top_k,
            allowed_next=self.rule,
            stop_ids=[tok.end_id] if stop else (),
            pad_id=tok.pad_id,
            generator=torch.Generator().manual_seed(seed),
        )

    def pieces(self, n: int, tokens: int, *, seed: int) -> list[Piece]:
        # Empty pieces stay in: MusicalEarlyStopping scores the fraction that decodes to notes.
        return [self.tokenizer.decode(row) for row in self.ids(n, tokens, seed=seed).tolist()]

    def __call__(self) -> list[Piece]:  # what MusicalEarlyStopping calls at each evaluation
        return self.pieces(
            self.args.eval_samples, self.args.sample_tokens // 2, seed=self.args.seed
        )


def build_model(args: argparse.Namespace, tokenizer: MusicTokenizer) -> GPT:
    """The GPT of a run: its shape from `args`, RoPE, bar-position (and voice-state) features."""
    config = GPTConfig(
        vocab_size=len(tokenizer.vocab),
        n_layer=args.n_layer,
        n_head=args.n_head,
        d_model=args.d_model,
        d_ff=args.d_ff,
        block_size=args.block_size,
        position="rope",  # relative positions (the seed's advice); generation past block_size
        max_position=4096,
        dropout=args.dropout,
        pad_id=tokenizer.pad_id,
    )
    bar_features = BarPositionFeatures(
        config.d_model,
        time_values=tokenizer.time_values(),
        bar_id=tokenizer.bar_id,
        start_id=tokenizer.start_id,
        resolution=tokenizer.grid,  # the onset grid: 1/8 of a quarter note
        max_steps=round(4.0 / tokenizer.grid),  # a 4/4 bar; longer bars share the last row
    )
    features: nn.Module = bar_features
    if args.voice_features:
        voice_state = VoiceStateFeatures(
            config.d_model,
            time_values=tokenizer.time_values(),
            duration_values=tokenizer.duration_values(),
            voice_ids=list(tokenizer.voice_ids),
            start_id=tokenizer.start_id,
            resolution=tokenizer.grid,
            max_steps=round(4.0 / tokenizer.grid),  # a whole note; longer waits share a row
        )
        features = FeatureSum([bar_features, voice_state])
    return GPT(config, position_features=features)


def with_run_shape(args: argparse.Namespace, run_dir: Path) -> argparse.Namespace:
    """A copy of `args` whose MODEL_ARGS are those the run in `run_dir` trained with (run.json).

    Runs from before --voice-features existed had no voice features.
    """
    trained = json.loads((run_dir / "run.json").read_text())
    trained.setdefault("voice_features", False)
    shaped = copy.copy(args)
    for name in MODEL_ARGS:
        setattr(shaped, name, trained.get(name, getattr(args, name)))
    return shaped


def load_member(run_dir: Path, args: argparse.Namespace, tokenizer: MusicTokenizer) -> GPT:
    """`--ensemble`: the `--evaluate` checkpoint of another run, rebuilt from its run.json."""
    if not (run_dir / "run.json").is_file() or not (run_dir / "tokenizer.json").is_file():
        raise SystemExit(f"--ensemble {run_dir}: no run.json and tokenizer.json there")
    if MusicTokenizer.load(run_dir / "tokenizer.json").to_dict() != tokenizer.to_dict():
        raise SystemExit(f"--ensemble {run_dir}: its tokenizer differs from --out-dir's")
    model = build_model(with_run_shape(args, run_dir), tokenizer)
    manager = CheckpointManager(run_dir / "checkpoints", monitor=MONITOR, mode="max")
    if not manager.exists(args.evaluate):
        raise SystemExit(f"--ensemble {run_dir}: no checkpoint {args.evaluate!r} there")
    model.load_state_dict(inference_weights(manager.load(args.evaluate)))
    return model.eval()


def steps_for_budget(model: GPT, data: TokenDataset, args: argparse.Namespace) -> int:
    """Time three training steps on a copy of the model; fit 70% of the budget with steps."""
    trial = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(trial.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(4):
        inputs, targets = data.sample_batch(args.batch_size, generator=generator)
        start = time.perf_counter()
        loss = trial(inputs, targets).loss
        assert loss is not None
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    per_step = sorted(times[1:])[1]  # the median of the warm steps
    return max(20, int(0.7 * args.budget_minutes * 60 / per_step))


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    out = args.out_dir
    if args.evaluate is not None and not (out / "checkpoints").is_dir():
        raise SystemExit(f"--evaluate {args.evaluate}: no checkpoints/ in --out-dir {out}")
    out.mkdir(parents=True, exist_ok=True)
    if (args.evaluate is not None or args.resume) and (out / "run.json").exists():
        # Rebuild the checkpoint's model, whatever the command line says about its shape.
        args = with_run_shape(args, out)
    pieces = load_pieces(args)
    tokenizer = make_tokenizer(pieces, args)
    if args.evaluate is None:
        tokenizer.save(out / "tokenizer.json")
    streams = {split: encode(tokenizer, pieces[split]) for split in ("train", "val", "test")}
    print(
        {split: f"{len(pieces[split])} pieces, {len(s):,} tokens" for split, s in streams.items()}
    )

    torch.manual_seed(args.seed)
    model = build_model(args, tokenizer)
    print(f"model: {model.num_parameters():,} parameters")
    holdout = pieces["val"] + pieces["test"]
    profile = music.MusicProfile.from_pieces(pieces["train"])
    if args.min_notes is None:  # samples may end where the shortest 5% of real pieces end
        args.min_notes = int(np.percentile([len(p) for p in pieces["train"]], 5))
    sampler = Sampler(model, tokenizer, args)
    if args.evaluate is not None:
        return evaluate_checkpoint(model, sampler, tokenizer, streams, holdout, profile, args)
    train_data = TokenDataset(streams["train"], args.block_size)

    run_file = out / "run.json"  # the step count must not change when a run resumes
    if args.resume and run_file.exists():
        max_steps = json.loads(run_file.read_text())["max_steps"]
    elif args.max_steps is not None:
        max_steps = args.max_steps
    elif args.budget_minutes is not None:
        max_steps = steps_for_budget(model, train_data, args)
    else:
        max_steps = 3000
    run_file.write_text(json.dumps({"max_steps": max_steps, **vars(args)}, default=str) + "\n")
    epoch_steps = len(streams["train"]) / (args.batch_size * args.block_size)
    print(f"{max_steps} steps = {max_steps / epoch_steps:.1f} epochs of the training tokens")

    notes = tokenizer.note_ids
    light = PitchShift((-1, 0, 1), note_ids=notes)
    heavy: PitchShift | Compose = PitchShift((-2, -1, 0, 1, 2), note_ids=notes)
    if args.rhythm:
        heavy = Compose([heavy, RhythmScale.for_tokenizer(tokenizer, factors=(0.5, 2.0))])
    augment = three_stage(light, heavy, seed=args.seed)  # epochs 0-9 none, 10-29 light, 30+ heavy

    trainer_config = TrainerConfig(
        max_steps=max_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=max(1, max_steps // 20),
        betas=(0.9, 0.95),
        grad_clip=1.0,
        eval_every=max(1, max_steps // args.evals),
        eval_batches=10,
        seed=args.seed,
        time_limit_s=None if args.budget_minutes is None else args.budget_minutes * 60 * 0.85,
        restore_best=True,
        ema_decay=args.ema,
    )
    trainer = Trainer(
        model,
        trainer_config,
        train_data,
        TokenDataset(streams["val"], args.block_size),
        loggers=[
            JSONLLogger(out / "metrics.jsonl"),
            TensorBoardLogger(out / "tb"),
            ConsoleLogger(total_steps=max_steps, every=10),
        ],
        checkpoints=CheckpointManager(out / "checkpoints", monitor=MONITOR, mode="max"),
        augment=augment,
        early_stopping=music.MusicalEarlyStopping(sampler, profile, patience=args.patience),
    )
    if args.resume and not trainer.resume():
        print("no checkpoint to resume from; starting fresh")
    start = time.perf_counter()
    final = trainer.fit()
    wall = time.perf_counter() - start

    results = evaluate_and_write(model, sampler, tokenizer, streams, holdout, profile, args, out)
    results.update(steps=trainer.step, train_wall_s=round(wall, 1), params=model.num_parameters())
    results["val_loss_final"] = final.get("val_loss")
    plot_metrics(out / "metrics.jsonl", out / "loss.png")
    plot_metrics(
        out / "metrics.jsonl",
        out / "music.png",
        keys=["music_score", "music_out_of_key", "music_bigram_overlap", "music_combined"],
    )
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(results_table(results))
    print(results_table(results))
    return results


def evaluate_checkpoint(
    model: GPT,
    sampler: Sampler,
    tokenizer: MusicTokenizer,
    streams: dict[str, np.ndarray],
    holdout: list[Piece],
    profile: music.MusicProfile,
    args: argparse.Namespace,
) -> dict[str, object]:
    """`--evaluate`: load a checkpoint of the run, sample it, write results to a new folder."""
    manager = CheckpointManager(args.out_dir / "checkpoints", monitor=MONITOR, mode="max")
    checkpoint = manager.load(args.evaluate)
    model.load_state_dict(inference_weights(checkpoint))
    run_dirs: list[Path] = args.ensemble or []
    members = [load_member(run_dir, args, tokenizer) for run_dir in run_dirs]
    sampled: nn.Module = Ensemble([model, *members]) if members else model
    sampler.model = sampled
    top_k = "" if args.top_k is None else f"_k{args.top_k}"
    tokens = "" if args.sample_tokens == SAMPLE_TOKENS else f"_n{args.sample_tokens}"
    ensemble = ""
    if members:
        # Which runs, not only how many: another ensemble must not overwrite this one's folder.
        runs = "\n".join(str(run_dir.resolve()) for run_dir in run_dirs)
        ensemble = f"_ens{1 + len(members)}-{hashlib.sha1(runs.encode()).hexdigest()[:6]}"
    settings = f"t{args.temperature:g}{top_k}_{sampler.rule_name}{tokens}{ensemble}"
    out = args.out_dir / f"eval_{args.evaluate}_{settings}"
    out.mkdir(exist_ok=True)
    results = evaluate_and_write(sampled, sampler, tokenizer, streams, holdout, profile, args, out)
    params = sum(m.num_parameters() for m in [model, *members])
    results.update(steps=checkpoint["step"], train_wall_s=None, params=params)
    results["ensemble"] = [str(run_dir) for run_dir in run_dirs]
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(results_table(results))
    print(results_table(results))
    return results


def evaluate_and_write(
    model: nn.Module,
    sampler: Sampler,
    tokenizer: MusicTokenizer,
    streams: dict[str, np.ndarray],
    holdout: list[Piece],
    profile: music.MusicProfile,
    args: argparse.Namespace,
    out: Path,
) -> dict[str, object]:
    """Sample the model, write the samples into `out`, and compare them with held-out Bach."""
    model.eval()
    losses = {}
    with torch.no_grad():
        for split in ("val", "test"):
            data = TokenDataset(streams[split], args.block_size)
            total = count = 0.0
            for inputs, targets in data.eval_batches(args.batch_size):
                loss = model(inputs, targets).loss
                assert loss is not None
                total += float(loss) * targets.numel()
                count += targets.numel()
            losses[split] = total / count
    one, seconds_1000 = time_1000_tokens(sampler, args.seed + 1)
    # The same 1000 tokens from a copy with float16 Linear weights (x86 CPUs: docs/models.md),
    # timed only: the samples below come from the float32 model.
    seconds_1000_float16 = None
    if "fbgemm" in torch.backends.quantized.supported_engines:
        fast = copy.copy(sampler)
        fast.model = pack_float16_linears(model)
        seconds_1000_float16 = round(time_1000_tokens(fast, args.seed + 1)[1], 2)
    ids = sampler.ids(args.final_samples, args.sample_tokens, seed=args.seed + 2)
    decoded = [tokenizer.decode(row) for row in [*ids.tolist(), *one.tolist()]]
    samples = [piece for piece in decoded if piece][: args.final_samples]
    (out / "samples").mkdir(exist_ok=True)
    for i, piece in enumerate(samples[:8]):
        write_midi(piece, out / "samples" / f"sample_{i:02d}.mid")
        write_musicxml(piece, out / "samples" / f"sample_{i:02d}.musicxml")
    sample_score = music.overall_score(samples, profile)
    bach_score = music.overall_score(holdout, profile)
    scores = [sample_score]
    for k in range(1, args.sample_sets):  # more sets of the same size, each with its own seeds
        more = sampler.pieces(args.final_samples, args.sample_tokens, seed=args.seed + 2 + 1000 * k)
        scores.append(music.overall_score([p for p in more if p], profile))
    percents = [100 * score / bach_score if bach_score else math.nan for score in scores]
    return {
        "val_loss": losses["val"],
        "test_nll": losses["test"],
        "temperature": args.temperature,
        "voices": args.voices,
        "min_notes": args.min_notes if args.voices != "grammar" else 0,
        "top_k": args.top_k,
        "seconds_1000_tokens": round(seconds_1000, 2),
        "seconds_1000_tokens_float16": seconds_1000_float16,
        "decodable": sum(1 for p in decoded if p) / len(decoded),
        "samples": music.corpus_summary(samples),
        "held_out_bach": music.corpus_summary(holdout),
        "overall_score_samples": sample_score,
        "overall_score_bach": bach_score,
        "percent_of_bach": percents[0],
        "percent_of_bach_sets": percents,
        "percent_of_bach_mean": sum(percents) / len(percents),
        "bigram_overlap_samples": music.interval_bigram_overlap(samples, profile),
        "bigram_overlap_bach": music.interval_bigram_overlap(holdout, profile),
    }


def time_1000_tokens(sampler: Sampler, seed: int) -> tuple[torch.Tensor, float]:
    """One row of 1000 tokens and the seconds they took, after a short warm-up.

    The first sampling call of a process pays one-time costs (allocations, kernel selection)
    that are not the per-token cost being timed.
    """
    sampler.ids(1, 32, seed=seed, stop=False)
    start = time.perf_counter()
    ids = sampler.ids(1, 1000, seed=seed, stop=False)
    return ids, time.perf_counter() - start


def results_table(results: dict[str, object]) -> str:
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
    wall = results["train_wall_s"]
    trained = "" if wall is None else f", training {wall} s"
    lines += [
        "",
        f"- step {results['steps']}{trained}, {results['params']:,} parameters",
        f"- samples drawn at temperature {results['temperature']}, top_k {results['top_k']}, "
        f"constraint --voices {results['voices']}, min_notes {results['min_notes']}",
        f"- val loss {results['val_loss']:.4f}, test NLL {results['test_nll']:.4f} (nats/token)",
        f"- overall score: {results['percent_of_bach']:.1f}% of held-out Bach's{spread}",
        f"- 1000 tokens generated in {results['seconds_1000_tokens']} s{float16}; "
        f"decodable {100 * float(results['decodable']):.0f}%",  # type: ignore[arg-type]
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

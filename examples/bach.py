"""Train a GPT on the Bach chorales: structured tokens, staged augmentation, musical early stopping.

    python examples/bach.py --out-dir runs/bach --budget-minutes 4    # the README's main job
    python examples/bach.py --out-dir runs/bach --resume              # continue from last.pt
    python examples/bach.py --midi-dir my_midi/ --out-dir runs/mine   # your own MIDI folder
    python examples/bach.py --out-dir runs/bach --evaluate last --temperature 0.8  # sample again

Needs the `music` extra; writes into --out-dir, `--evaluate` into a new folder (docs/recipes.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from transformer_kit.checkpoint import CheckpointError, CheckpointManager, check_run_folder
from transformer_kit.cli import int_in, real_in
from transformer_kit.data import TokenDataset
from transformer_kit.logging import ConsoleLogger, JSONLLogger, TensorBoardLogger, plot_metrics
from transformer_kit.metrics import music
from transformer_kit.recipes import music as recipe
from transformer_kit.tokenization import MusicTokenizer
from transformer_kit.trainer import Trainer, TrainerConfig

PLOTTED = ["score", "out_of_key", "bigram_overlap", "combined"]  # music.png; best.pt: top combined
COUNT, NOTES, POSITIVE = int_in(1), int_in(0), real_in(0, low_ok=False)  # argparse names the flag
NUMBERS = {  # flag: (type, default, help); seeds in int64: the samples take seed + 2 + 1000 k
    "seed": (int_in(-(2**63), 2**63 - 1), 1337, ""), "n_layer": (COUNT, 4, ""),
    "n_head": (COUNT, 8, ""), "d_model": (COUNT, 256, ""), "d_ff": (COUNT, 1024, ""),
    "block_size": (int_in(1, 4096), 512, "<= max_position"), "batch_size": (COUNT, 8, ""),
    "lr": (POSITIVE, 1e-3, ""), "dropout": (real_in(0, 1, low_ok=True, high_ok=False), 0.1, ""),
    "budget_minutes": (POSITIVE, None, "wall time"), "max_steps": (COUNT, None, "default: budget"),
    "evals": (COUNT, 8, "evaluations in the run"), "patience": (COUNT, 15, "evaluations"),
    "ema": (real_in(0, 1, low_ok=False, high_ok=False), None, "average the weights, e.g. 0.995"),
    "heavy_from": (int_in(11), 30, "epoch"), "max_shift": (COUNT, 2, "semitones"),
    "eval_samples": (COUNT, 4, "samples per evaluation"), "sample_tokens": (int_in(2), 1200, ""),
    "sample_sets": (COUNT, 1, ""), "final_samples": (COUNT, None, "default: held-out count"),
    "temperature": (real_in(0, low_ok=True), 1.0, "0: greedy"), "top_k": (COUNT, None, ""),
    "min_notes": (NOTES, None, "no <END> before; default: 5th percentile of the pieces"),
    "max_notes": (NOTES, None, "end at the first chance after; default: a random piece's, 0: none"),
}  # fmt: skip


def key_choice(text: str) -> str | int:
    """--key: model, corpus, or a key signature in sharps (negative: flats)."""
    if text in ("model", "corpus"):
        return text
    if text.removeprefix("-").isdigit() and -7 <= int(text) <= 7:
        return int(text)
    raise argparse.ArgumentTypeError(f"must be model, corpus or an int in [-7, 7], got {text!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path("runs/bach"))
    parser.add_argument("--midi-dir", type=Path, help="train on this folder instead of Bach")
    parser.add_argument("--cache-dir", type=Path, help="where the parsed corpus is cached")
    for name, (kind, default, text) in NUMBERS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default, help=text)
    parser.add_argument("--resume", action="store_true", help="continue from checkpoints/last")
    parser.add_argument("--rhythm", action="store_true", help="also x2 / x0.5 rhythm, epoch 30+")
    for flag, text in (("--voice-features", "also feed how long each voice keeps sounding"),
                       ("--key-token", "open each piece with its key signature"),
                       ("--fermata-token", "mark onsets with a fermata (phrase ends)"),
                       ("--end-on-fermata", "with --fermata-token, end samples on a cadence"),
                       ):  # fmt: skip
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=False, help=text)
    parser.add_argument("--key", type=key_choice, default="model", help="with --key-token, "
                        "each sample's key: model (drawn by it), corpus (drawn from the "
                        "training pieces' keys) or a key signature in sharps")  # fmt: skip
    parser.add_argument("--voices", choices=["fill", "mono", "grammar"], default="fill",
                        help="VoiceLeading (fill: all voices sound), or grammar")  # fmt: skip
    parser.add_argument("--evaluate", choices=["best", "last"], help="sample this checkpoint")
    parser.add_argument("--ensemble", type=Path, nargs="+", metavar="RUN_DIR",
                        help="with --evaluate: sample these runs and this one as one")  # fmt: skip
    args = parser.parse_args(argv)
    if args.resume or args.evaluate:  # the run's own settings; flags given here win
        parser.set_defaults(**recipe.run_defaults(args.out_dir, evaluate=bool(args.evaluate)))
        args = parser.parse_args(argv)
    if args.key != "model" and not args.key_token:
        parser.error(f"--key {args.key}: only a --key-token model opens its pieces with a key")
    if args.end_on_fermata and not args.fermata_token:
        parser.error("--end-on-fermata: only a --fermata-token model marks its cadences")
    if args.fermata_token and args.midi_dir:
        parser.error(
            "--fermata-token: MIDI files carry no fermatas, so --midi-dir has none to mark"
        )
    if args.ensemble and args.evaluate is None:
        parser.error("--ensemble needs --evaluate best|last: it only samples trained runs")
    return args


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    out = args.out_dir
    if args.evaluate is not None and not (out / "checkpoints").is_dir():
        raise SystemExit(f"--evaluate {args.evaluate}: no checkpoints/ in --out-dir {out}")
    try:  # --out-dir: not a file; another run only to --resume it or to --evaluate it
        check_run_folder(out, resume=args.resume or args.evaluate is not None)
        pieces = recipe.load_splits(args.midi_dir, cache_dir=args.cache_dir, seed=args.seed)
        bounds = recipe.length_bounds(pieces["train"], args.min_notes, args.max_notes)
        marks = dict(key_tokens=args.key_token, fermata_tokens=args.fermata_token)
        tok = (recipe.fit_tokenizer(sum(pieces.values(), []), **marks)
               if args.midi_dir else MusicTokenizer(**marks))  # fmt: skip
        torch.manual_seed(args.seed)
        model = recipe.music_gpt(tok, **{k: getattr(args, k) for k in recipe.RUN_SHAPE})
        out.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as error:  # no such folder, too few pieces, bad --*-notes,
        raise SystemExit(str(error)) from error  # a --d-model that --n-head does not divide
    streams = {name: recipe.encode_pieces(tok, split) for name, split in pieces.items()}
    print({name: f"{len(pieces[name])} pieces, {len(s):,} tokens" for name, s in streams.items()})
    args.min_notes, max_notes = bounds  # default: 5th percentile; maxima drawn from the lengths
    profile = music.MusicProfile.from_pieces(pieces["train"])
    evaluation = dict(streams=streams, holdout=pieces["val"] + pieces["test"], profile=profile,
        block_size=args.block_size, batch_size=args.batch_size, seed=args.seed,
        samples=args.final_samples, tokens=args.sample_tokens, sets=args.sample_sets)  # fmt: skip
    sampler = recipe.PieceSampler(  # what MusicalEarlyStopping and the final samples draw
        model, tok, voices=args.voices, min_notes=args.min_notes, top_k=args.top_k,
        max_notes=max_notes, temperature=args.temperature, seed=args.seed,
        eval_samples=args.eval_samples, eval_tokens=args.sample_tokens // 2,
        end_on_fermata=args.end_on_fermata,
        keys=None if args.key == "model" else [p[0].key for p in pieces["train"] if p]
        if args.key == "corpus" else args.key)  # fmt: skip
    if args.evaluate is not None:  # sample a trained checkpoint again, into its own folder
        try:
            runs = [out, *(args.ensemble or [])]
            results = recipe.evaluate_checkpoint(sampler, runs, args.evaluate, **evaluation)
        except (FileNotFoundError, ValueError, CheckpointError) as error:
            raise SystemExit(str(error)) from error
        print(recipe.results_markdown(results))
        return results
    train = TokenDataset(streams["train"], args.block_size)
    if args.max_steps is None and args.budget_minutes is not None:  # 70% of it for steps
        args.max_steps = recipe.steps_for_budget(model, train, args.batch_size, args.budget_minutes)
    max_steps = args.max_steps = 3000 if args.max_steps is None else args.max_steps
    epoch_steps = len(streams["train"]) / (args.batch_size * args.block_size)
    print(f"{max_steps} steps = {max_steps / epoch_steps:.1f} epochs of the training tokens")
    config = TrainerConfig(
        max_steps=max_steps, batch_size=args.batch_size, lr=args.lr, betas=(0.9, 0.95),
        warmup_steps=max(1, max_steps // 20), grad_clip=1.0, eval_batches=10, seed=args.seed,
        eval_every=max(1, max_steps // args.evals), restore_best=True, ema_decay=args.ema,
        time_limit_s=None if args.budget_minutes is None else args.budget_minutes * 60 * 0.85,
    )  # fmt: skip
    trainer = Trainer(  # augment and early_stopping check their settings before any file
        model, config, train, TokenDataset(streams["val"], args.block_size),
        augment=recipe.pitch_stages(tok, rhythm=args.rhythm, seed=args.seed,
                                    max_shift=args.max_shift, heavy_from=args.heavy_from),
        early_stopping=music.MusicalEarlyStopping(sampler, profile, patience=args.patience),
        loggers=[JSONLLogger(out / "metrics.jsonl"), TensorBoardLogger(out / "tb"),
                 ConsoleLogger(total_steps=max_steps, every=10)],
        checkpoints=CheckpointManager(out / "checkpoints", monitor="music_combined", mode="max"),
    )  # fmt: skip
    try:  # Trainer.resume refuses a flag that changes what a step is (batch size, lr, ...)
        if args.resume and not trainer.resume():
            print("no checkpoint to resume from; starting fresh")
    except CheckpointError as error:
        raise SystemExit(str(error)) from error
    tok.save(out / "tokenizer.json")
    (out / "run.json").write_text(json.dumps(vars(args), default=str) + "\n")  # for --resume
    start = time.perf_counter()
    final = trainer.fit()
    wall = round(time.perf_counter() - start, 1)
    results = recipe.evaluate_music(sampler, out_dir=out, **evaluation)
    results.update(steps=trainer.step, train_wall_s=wall, params=model.num_parameters())
    results["val_loss_final"] = final.get("val_loss")
    plot_metrics(out / "metrics.jsonl", out / "loss.png")
    plot_metrics(out / "metrics.jsonl", out / "music.png", keys=[f"music_{k}" for k in PLOTTED])
    print(recipe.write_results(results, out))
    return results


if __name__ == "__main__":
    main()

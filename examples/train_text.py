"""Train a character-level GPT on text: the Python standard library by default, or your file.

    python examples/train_text.py --out-dir runs/text            # ~1M params, a few minutes on CPU
    python examples/train_text.py --out-dir runs/text --resume   # continue from checkpoints/last.pt
    python examples/train_text.py --data my.txt --max-steps 2000 --d-model 256 --n-layer 6

Writes into --out-dir: metrics.jsonl, TensorBoard events (tb/), checkpoints/{last,best}.pt,
tokenizer.json, samples.txt and loss.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from transformer_kit import sampling
from transformer_kit.checkpoint import CheckpointError, CheckpointManager, check_run_folder
from transformer_kit.cli import int_in, real_in
from transformer_kit.data import TokenDataset, read_text_file, stdlib_corpus, train_val_split
from transformer_kit.distributed import init_distributed, shutdown_distributed
from transformer_kit.logging import (
    ConsoleLogger,
    JSONLLogger,
    TensorBoardLogger,
    TextLogger,
    plot_metrics,
)
from transformer_kit.models import GPT, GPTConfig
from transformer_kit.tokenization import CharTokenizer
from transformer_kit.trainer import Trainer, TrainerConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="UTF-8 text file (default: stdlib sources)")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/text"))
    parser.add_argument("--max-steps", type=int_in(1), default=600)
    parser.add_argument("--eval-every", type=int_in(1), default=100)
    parser.add_argument("--checkpoint-every", type=int_in(1), default=None)
    parser.add_argument("--seed", type=int_in(-(2**63), 2**64 - 1), default=1337)  # torch's range
    parser.add_argument("--resume", action="store_true", help="continue from checkpoints/last")
    parser.add_argument("--n-layer", type=int_in(1), default=5)
    parser.add_argument("--n-head", type=int_in(1), default=4)
    parser.add_argument("--d-model", type=int_in(1), default=128)
    parser.add_argument("--block-size", type=int_in(1), default=128)
    parser.add_argument("--batch-size", type=int_in(1), default=32)
    parser.add_argument("--lr", type=real_in(0, low_ok=False), default=2e-3)
    parser.add_argument("--dropout", type=real_in(0, 1, low_ok=True, high_ok=False), default=0.0)
    parser.add_argument("--corpus-bytes", type=int_in(1), default=4_000_000)
    parser.add_argument("--sample-tokens", type=int_in(1), default=300)
    parser.add_argument("--device", default="cpu", help='"cpu", "cuda" or "auto"')
    return parser.parse_args(argv)  # argparse refuses a bad number, naming its flag


class SamplePrinter:
    """A callback: generate a sample at each evaluation and at the end, log it as text."""

    def __init__(self, tokenizer: CharTokenizer, n_tokens: int, seed: int):
        self.tokenizer, self.n_tokens, self.seed = tokenizer, n_tokens, seed

    def sample(self, trainer: Trainer) -> str:
        prompt = torch.tensor([self.tokenizer.encode("def ")], device=trainer.device)
        generator = torch.Generator(device=trainer.device).manual_seed(self.seed)
        ids = sampling.generate(
            trainer.model, prompt, self.n_tokens, temperature=0.8, top_k=40, generator=generator
        )
        return self.tokenizer.decode(ids[0].tolist())

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if not trainer.context.is_main:  # under torchrun, rank 0 speaks for the run
            return
        trainer.log_text("sample", self.sample(trainer))  # TensorBoard, samples.txt, console


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    try:  # on every rank before any rank can write (rendezvous below); a .gitkeep is no run
        out = check_run_folder(args.out_dir, resume=args.resume)  # not a file, not another run
        context = init_distributed(args.device)  # checks the device; world size 1 unless torchrun
        text = (
            read_text_file(args.data) if args.data else stdlib_corpus(max_bytes=args.corpus_bytes)
        )
    except (OSError, ValueError) as error:  # also a --data file that is missing or not UTF-8
        raise SystemExit(str(error)) from error
    say = print if context.is_main else (lambda *a, **k: None)
    tokenizer_path = out / "tokenizer.json"
    if args.resume and tokenizer_path.exists():
        tokenizer = CharTokenizer.load(tokenizer_path)  # the ids must not change on resume
    else:
        tokenizer = CharTokenizer.fit(text, min_count=20)  # rare characters become <UNK>
    tokens = tokenizer.encode_array(text)
    splits = train_val_split(tokens, val_fraction=0.1) if len(tokens) > 1 else (tokens, tokens)
    if min(len(ids) for ids in splits) <= args.block_size:  # each split needs a window + 1
        text_from = f"--data {args.data}" if args.data else f"--corpus-bytes {args.corpus_bytes}"
        raise SystemExit(
            f"{text_from}: {len(tokens):,} characters, too few for --block-size {args.block_size}:"
            f" training and validation (the last 10%) need {args.block_size + 1:,} each, about"
            f" {10 * (args.block_size + 1):,} in all; use a longer text or a smaller --block-size"
        )
    say(f"corpus: {len(text):,} chars, vocab {len(tokenizer.vocab)}, {tokenizer.unknown_count} unk")

    torch.manual_seed(args.seed)
    sizes = {k: getattr(args, k) for k in ("block_size", "n_layer", "n_head", "d_model", "dropout")}
    model = GPT(GPTConfig(vocab_size=len(tokenizer.vocab), **sizes))
    say(f"model: {model.num_parameters():,} parameters")
    keys = ("max_steps", "batch_size", "lr", "eval_every", "checkpoint_every", "seed", "device")
    config = TrainerConfig(
        warmup_steps=min(100, args.max_steps // 10), **{k: getattr(args, k) for k in keys}
    )
    data = [TokenDataset(ids, args.block_size) for ids in splits]
    samples = SamplePrinter(tokenizer, args.sample_tokens, args.seed)
    out.mkdir(parents=True, exist_ok=True)  # the first write into --out-dir
    loggers = [JSONLLogger(out / "metrics.jsonl"), TensorBoardLogger(out / "tb"),
               TextLogger(out / "samples.txt"),  # rewound on resume, like the metrics
               ConsoleLogger(total_steps=args.max_steps, every=10)]  # fmt: skip
    trainer = Trainer(model, config, *data, loggers=loggers, callbacks=[samples],
                      checkpoints=CheckpointManager(out / "checkpoints"))  # fmt: skip
    try:  # Trainer.resume refuses a flag that changes what a step is (batch size, lr, ...)
        if args.resume and not trainer.resume():
            say("no checkpoint to resume from; starting fresh")
    except CheckpointError as error:
        raise SystemExit(str(error)) from error
    if context.is_main and not tokenizer_path.exists():  # not before a refused resume
        tokenizer.save(tokenizer_path)
    start = time.perf_counter()
    final = trainer.fit()
    wall = time.perf_counter() - start
    shutdown_distributed()  # every rank is past its last collective; rank 0 carries on alone
    if not trainer.context.is_main:
        return final
    print(f"\nfinal sample (step {trainer.step}):\n{samples.sample(trainer)}\n")
    plot_metrics(out / "metrics.jsonl", out / "loss.png")
    summary = {
        "parameters": model.num_parameters(), "steps": trainer.step, "wall_s": round(wall, 1),
        "val_loss": final.get("val_loss"), "val_ppl": final.get("val_ppl"),
        "train_loss": final.get("train_loss"), "best_val_loss": trainer.checkpoints.best_metric,
        "tokens_per_step": config.tokens_per_step(block_size=args.block_size),
        "vocab": len(tokenizer.vocab),
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return final


if __name__ == "__main__":
    main()

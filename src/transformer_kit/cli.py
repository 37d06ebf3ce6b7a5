"""The `transformer-kit` command: sample from a trained run, plot its metrics, inspect it.

Training itself is done by the scripts in examples/ (each a complete, editable story); the
command works on the run folder they write (checkpoints/, tokenizer.json, metrics.jsonl).
    $ transformer-kit generate runs/text --prompt "def " --max-new-tokens 200
    $ transformer-kit plot runs/text
    $ transformer-kit inspect runs/text
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from transformer_kit import sampling
from transformer_kit._version import __version__
from transformer_kit.averaging import inference_weights
from transformer_kit.checkpoint import CheckpointManager
from transformer_kit.logging import plot_metrics
from transformer_kit.models import GPT, GPTConfig
from transformer_kit.tokenization import MusicTokenizer, load_tokenizer

__all__ = ["main"]


def _generate(args: argparse.Namespace) -> int:
    run = Path(args.run_dir)
    tokenizer = load_tokenizer(run / "tokenizer.json")
    if isinstance(tokenizer, MusicTokenizer):
        raise SystemExit(
            f"generate: {run} is a music run (MusicTokenizer), which takes no text prompt; "
            f"sample it with: python examples/bach.py --out-dir {run} --evaluate best"
        )
    state = CheckpointManager(run / "checkpoints").load(args.checkpoint)
    model = GPT(GPTConfig.from_dict(state["config"]))
    weights = inference_weights(state)  # the weight average when the run kept one
    extra = sorted(_parts(weights) - _parts(model.state_dict()))
    if extra:  # e.g. a position_features module, which the config alone cannot rebuild
        raise SystemExit(
            f"generate: the checkpoint's model has parts a plain GPT lacks ({', '.join(extra)}); "
            "rebuild that model in your own script and call transformer_kit.sampling.generate"
        )
    model.load_state_dict(weights)
    prompt_ids = tokenizer.encode(args.prompt)
    if not prompt_ids:
        raise SystemExit("generate: --prompt must encode to at least one token")
    prompt = torch.tensor([prompt_ids] * args.num_samples)
    generator = torch.Generator().manual_seed(args.seed)
    ids = sampling.generate(
        model,
        prompt,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        generator=generator,
    )
    for row in ids.tolist():
        print(tokenizer.decode(row))
        print()
    return 0


def _parts(state: Mapping[str, object]) -> set[str]:
    """The top-level module names of a state_dict: 'blocks' for 'blocks.0.attn.qkv.weight'."""
    return {key.split(".")[0] for key in state}


def _plot(args: argparse.Namespace) -> int:
    run = Path(args.run_dir)
    out = Path(args.out) if args.out else run / "loss.png"
    print(plot_metrics(run / "metrics.jsonl", out))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    manager = CheckpointManager(Path(args.run_dir) / "checkpoints")
    print(json.dumps(manager.manifest, indent=2, default=str))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transformer-kit", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="sample text from a run's checkpoint")
    gen.add_argument("run_dir", help="a run folder written by examples/train_text.py")
    gen.add_argument("--checkpoint", default="best", help='"best" (default) or "last"')
    gen.add_argument("--prompt", default="\n")
    gen.add_argument("--max-new-tokens", type=int, default=300)
    gen.add_argument("--num-samples", type=int, default=1)
    gen.add_argument("--temperature", type=float, default=0.8)
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(func=_generate)

    plot = commands.add_parser("plot", help="draw loss / lr / grad-norm curves to a PNG")
    plot.add_argument("run_dir")
    plot.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/loss.png)")
    plot.set_defaults(func=_plot)

    inspect = commands.add_parser("inspect", help="print a run's checkpoint manifest")
    inspect.add_argument("run_dir")
    inspect.set_defaults(func=_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `transformer-kit` console script."""
    args = _parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

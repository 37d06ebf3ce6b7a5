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
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from transformer_kit import sampling
from transformer_kit._version import __version__
from transformer_kit.averaging import inference_weights
from transformer_kit.checkpoint import CheckpointError, CheckpointManager
from transformer_kit.logging import plot_metrics
from transformer_kit.models import GPT, GPTConfig
from transformer_kit.tokenization import MusicTokenizer, load_tokenizer

__all__ = ["int_in", "main", "real_in"]


def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an int in ``[low, high]``, or ``>= low`` when ``high`` is None.

    A bad value is refused by argparse, which names the flag: ``argument --seed: must be an
    int in [-2**63, 2**64 - 1], got '18446744073709551616'`` (exit code 2). Defaults are
    not passed through it unless they are strings (argparse's rule).

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> _ = parser.add_argument("--steps", type=int_in(1), default=100)
        >>> parser.parse_args(["--steps", "20"]).steps
        20
    """
    allowed = f"an int >= {low}" if high is None else f"an int in [{_shown(low)}, {_shown(high)}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
        return value

    return parse


def real_in(
    low: float, high: float = math.inf, *, low_ok: bool, high_ok: bool = True
) -> Callable[[str], float]:
    """An argparse type: a finite number above ``low`` and up to ``high``.

    ``low_ok`` lets it equal ``low``, ``high_ok`` (the default) lets it equal ``high``; with
    ``high=math.inf`` there is no upper bound. NaN and infinities are refused, and argparse
    names the flag: ``argument --top-p: must be a finite number > 0 and <= 1, got '0'``.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> _ = parser.add_argument("--dropout", type=real_in(0, 1, low_ok=True, high_ok=False))
        >>> parser.parse_args(["--dropout", "0.1"]).dropout
        0.1
    """
    bounds = f"{'>=' if low_ok else '>'} {low:g}"
    bounds += f" and {'<=' if high_ok else '<'} {high:g}" if math.isfinite(high) else ""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        inside = (low < value or (low_ok and value == low)) and (
            value < high or (high_ok and value == high)
        )
        if not (inside and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be a finite number {bounds}, got {text!r}")
        return value

    return parse


def _shown(bound: int) -> str:
    """``bound`` for a message: past 2**32 as a power of two (or one less) where it is one."""
    if abs(bound) > 2**32:
        if bound < 0 and (-bound).bit_count() == 1:
            return f"-2**{(-bound).bit_length() - 1}"
        if bound > 0 and (bound + 1).bit_count() == 1:
            return f"2**{bound.bit_length()} - 1"
        if bound > 0 and bound.bit_count() == 1:
            return f"2**{bound.bit_length() - 1}"
    return str(bound)


def _run_folder(command: str, run_dir: str, *needs: str) -> Path:
    """The run folder, or an exit message when it is missing, a file, or lacks what is needed."""
    run = Path(run_dir)
    if not run.is_dir():
        what = "is a file, not a folder" if run.exists() else "does not exist"
        raise SystemExit(f"transformer-kit {command}: the run folder {run} {what}")
    missing = [name for name in needs if not (run / name).exists()]
    if missing:
        raise SystemExit(
            f"transformer-kit {command}: {run} has no {' and no '.join(missing)}; "
            "name a run folder written by examples/train_text.py"
        )
    return run


def _generate(args: argparse.Namespace) -> int:
    run = _run_folder("generate", args.run_dir, "tokenizer.json", "checkpoints")
    tokenizer = load_tokenizer(run / "tokenizer.json")
    if isinstance(tokenizer, MusicTokenizer):
        raise SystemExit(
            f"generate: {run} is a music run (MusicTokenizer), which takes no text prompt; "
            f"sample it with: python examples/bach.py --out-dir {run} --evaluate best"
        )
    # Read-only: the run may still be training, and saving into this folder.
    state = CheckpointManager(run / "checkpoints", read_only=True).load(args.checkpoint)
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
    run = _run_folder("plot", args.run_dir, "metrics.jsonl")
    out = Path(args.out) if args.out else run / "loss.png"
    print(plot_metrics(run / "metrics.jsonl", out))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    run = _run_folder("inspect", args.run_dir, "checkpoints")
    manager = CheckpointManager(run / "checkpoints", read_only=True)  # changes nothing
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
    gen.add_argument("--max-new-tokens", type=int_in(1), default=300)
    gen.add_argument("--num-samples", type=int_in(1), default=1)
    gen.add_argument("--temperature", type=real_in(0, low_ok=True), default=0.8,
                     help="0: greedy")  # fmt: skip
    gen.add_argument("--top-k", type=int_in(1), default=None)
    gen.add_argument("--top-p", type=real_in(0, 1, low_ok=False), default=None)
    gen.add_argument("--seed", type=int_in(-(2**63), 2**64 - 1), default=0)  # manual_seed's range
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
    """Entry point of the `transformer-kit` console script.

    Errors in the run folder's files (a corrupt manifest, an unknown checkpoint, a tokenizer
    that does not load) end the command with their message, not a traceback.
    """
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (CheckpointError, ValueError, OSError) as error:
        raise SystemExit(f"transformer-kit {args.command}: {error}") from error


if __name__ == "__main__":
    sys.exit(main())

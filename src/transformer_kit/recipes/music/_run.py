"""The data, tokenizer and model of a music run, and the model of a finished run."""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transformer_kit._numbers import _check_int, _check_real
from transformer_kit.augment import (
    Augmentation,
    Compose,
    PitchShift,
    RhythmScale,
    StagedAugmentation,
    three_stage,
)
from transformer_kit.averaging import inference_weights
from transformer_kit.checkpoint import load_checkpoint
from transformer_kit.data import TokenDataset, bach_chorales, read_music_folder, split_pieces
from transformer_kit.models import (
    GPT,
    BarPositionFeatures,
    FeatureSum,
    GPTConfig,
    VoiceStateFeatures,
)
from transformer_kit.tokenization import MusicTokenizer
from transformer_kit.tokenization.events import Piece

__all__ = [
    "RUN_SHAPE",
    "encode_pieces",
    "fit_tokenizer",
    "load_run_model",
    "load_splits",
    "music_gpt",
    "pitch_stages",
    "run_defaults",
    "steps_for_budget",
]

RUN_SHAPE = ("n_layer", "n_head", "d_model", "d_ff", "block_size", "dropout", "voice_features")
"""The keywords of `music_gpt` that `load_run_model` reads from a run's run.json."""

_MAX_STEPS = 2**62
"""The most steps `steps_for_budget` returns: any budget beyond it runs out of time first."""

_SPLITS = ("train", "val", "test")
_NOT_RESUMED = ("out_dir", "cache_dir", "resume", "evaluate", "ensemble")
_PITCH_MARGIN = 2  # semitones beyond a folder's range: room for +-2 pitch shifts


def load_splits(
    midi_dir: Path | None = None, *, cache_dir: Path | None = None, seed: int = 1337
) -> dict[str, list[Piece]]:
    """Train, val and test pieces: the Bach chorales, or the MIDI files of a folder.

    The chorales come from `data.bach_chorales(cache_dir)`; a folder is read with
    `data.read_music_folder` and split 90/5/5 by melody with `data.split_pieces(seed=seed)`.

    Raises:
        ValueError: if a folder has too few pieces to give every split one.
    """
    if midi_dir is None:
        return bach_chorales(cache_dir)
    splits = split_pieces(read_music_folder(midi_dir), seed=seed)
    empty = [name for name in _SPLITS if not splits[name]]
    if empty:
        raise ValueError(f"load_splits: midi_dir {str(midi_dir)!r} has too few pieces: no {empty}")
    return splits


def fit_tokenizer(
    pieces: Sequence[Piece], *, key_tokens: bool = False, fermata_tokens: bool = False
) -> MusicTokenizer:
    """A `MusicTokenizer` whose pitches cover `pieces` and 2 semitones more, and their voices.

    (`MusicTokenizer()`'s defaults cover the chorales already.) `key_tokens` and
    `fermata_tokens` go to the tokenizer: each piece then opens with its key signature, and
    each onset with a fermata is marked.

    Raises:
        ValueError: if `pieces` holds no note.
    """
    events = [event for piece in pieces for event in piece]
    if not events:
        raise ValueError("fit_tokenizer: pieces must hold at least one note, got none")
    low, high = min(e.pitch for e in events), max(e.pitch for e in events)
    return MusicTokenizer(
        min_pitch=max(0, low - _PITCH_MARGIN),
        max_pitch=min(127, high + _PITCH_MARGIN),
        voices=max(e.voice for e in events),
        key_tokens=key_tokens,
        fermata_tokens=fermata_tokens,
    )


def encode_pieces(tokenizer: MusicTokenizer, pieces: Sequence[Piece]) -> np.ndarray:
    """One int64 token stream: every piece from `<START>` to `<END>`, back to back."""
    if not pieces:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.asarray(tokenizer.encode(p), dtype=np.int64) for p in pieces])


def music_gpt(
    tokenizer: MusicTokenizer,
    *,
    n_layer: int = 4,
    n_head: int = 8,
    d_model: int = 256,
    d_ff: int = 1024,
    block_size: int = 512,
    dropout: float = 0.1,
    voice_features: bool = False,
) -> GPT:
    """A GPT for `tokenizer`'s streams: RoPE, bar-position features, optionally voice states.

    RoPE positions are relative (the seed's advice), so generation runs past `block_size` up to
    4096 positions. `BarPositionFeatures` feeds the position within the bar, and with
    `voice_features` a `VoiceStateFeatures` also feeds how long each voice keeps sounding, both
    on the tokenizer's grid with 4 quarter lengths as the longest step count.
    """
    config = GPTConfig(
        vocab_size=len(tokenizer.vocab),
        n_layer=n_layer,
        n_head=n_head,
        d_model=d_model,
        d_ff=d_ff,
        block_size=block_size,
        position="rope",
        max_position=4096,
        dropout=dropout,
        pad_id=tokenizer.pad_id,
    )
    steps = round(4.0 / tokenizer.grid)  # a 4/4 bar, or a whole note; longer ones share a row
    features: nn.Module = BarPositionFeatures(
        d_model,
        time_values=tokenizer.time_values(),
        bar_id=tokenizer.bar_id,
        start_id=tokenizer.start_id,
        resolution=tokenizer.grid,
        max_steps=steps,
    )
    if voice_features:
        voice_state = VoiceStateFeatures(
            d_model,
            time_values=tokenizer.time_values(),
            duration_values=tokenizer.duration_values(),
            voice_ids=list(tokenizer.voice_ids),
            start_id=tokenizer.start_id,
            resolution=tokenizer.grid,
            max_steps=steps,
        )
        features = FeatureSum([features, voice_state])
    return GPT(config, position_features=features)


def load_run_model(
    run_dir: Path, checkpoint: str, tokenizer: MusicTokenizer | None = None
) -> tuple[GPT, int]:
    """The model of a finished run and its training step, in eval mode, ready to sample.

    The run folder holds run.json (`music_gpt`'s `RUN_SHAPE` keywords; missing ones take their
    defaults, other keys are ignored), tokenizer.json and the checkpoints/ of a
    `CheckpointManager`; the weights are `averaging.inference_weights` of `checkpoint` ("best",
    "last", "step-00000400"), the moving average when the run kept one. Nothing in the folder
    is written: the file is checked against the manifest's sha256 and read with
    `checkpoint.load_checkpoint`, without opening a manager (which tidies its folder).

    Raises:
        FileNotFoundError: if run.json, tokenizer.json or the checkpoint is missing.
        ValueError: if `tokenizer` is given and differs from the run's, or the manifest is not
            readable JSON.
        CheckpointError: if the checkpoint file does not match its manifest entry or is corrupt.
    """
    where = f"load_run_model: run_dir {str(run_dir)!r}"
    if not (run_dir / "run.json").is_file() or not (run_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{where} has no run.json and tokenizer.json")
    own = MusicTokenizer.load(run_dir / "tokenizer.json")
    if tokenizer is not None and own.to_dict() != tokenizer.to_dict():
        raise ValueError(f"{where}: its tokenizer differs from the one given")
    manifest = run_dir / "checkpoints" / "manifest.json"
    try:
        entries = json.loads(manifest.read_text())["checkpoints"] if manifest.is_file() else {}
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{where}: {manifest} is not a checkpoint manifest ({error!r})") from error
    name = checkpoint.removesuffix(".pt")
    if name not in entries:
        raise FileNotFoundError(f"{where} has no checkpoint {checkpoint!r}")
    path = run_dir / "checkpoints" / f"{name}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{where}: its manifest lists {checkpoint!r} but {path} is missing")
    state = load_checkpoint(path, expected_sha256=entries[name]["sha256"])
    trained = json.loads((run_dir / "run.json").read_text())
    model = music_gpt(own, **{key: trained[key] for key in RUN_SHAPE if key in trained})
    model.load_state_dict(inference_weights(state))
    return model.eval(), int(state["step"])


def run_defaults(run_dir: Path, *, evaluate: bool = False) -> dict[str, Any]:
    """A run's settings from its run.json, as defaults for a command line that goes on with it.

    To resume (the default): every key but where the run lives and what the command does
    (out_dir, cache_dir, resume, evaluate, ensemble), so that the run continues as it began
    unless a flag given says otherwise; `Trainer.resume` then refuses a flag that changes what a
    step is (the batch size, the learning rate; `trainer.RESUME_FIXED`). With `evaluate`: the
    `RUN_SHAPE` keys, `midi_dir` and `seed` (the data and its split, so that the held-out
    pieces are the run's) and `key_token` and `fermata_token` (its tokenizer), while the
    sampler's settings are the command line's. Runs older than `voice_features`, `key_token`
    or `fermata_token` get False for them. Empty
    when `run_dir` has no run.json.

    Raises:
        ValueError: if run.json is not valid JSON or not an object.
    """
    path = run_dir / "run.json"
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"run_defaults: {path} is not valid JSON ({error})") from error
    if not isinstance(saved, dict):
        kind = type(saved).__name__
        raise ValueError(f"run_defaults: {path} must hold a JSON object, got {kind}")
    saved = {"voice_features": False, "key_token": False, "fermata_token": False, **saved}
    if evaluate:
        kept = (*RUN_SHAPE, "key_token", "fermata_token", "midi_dir", "seed")
        return {key: saved[key] for key in kept if key in saved}
    return {key: value for key, value in saved.items() if key not in _NOT_RESUMED}


def pitch_stages(
    tokenizer: MusicTokenizer,
    *,
    rhythm: bool = False,
    seed: int = 0,
    max_shift: int = 2,
    heavy_from: int = 30,
) -> StagedAugmentation:
    """The seed document's augmentation schedule for a music run (`augment.three_stage`).

    Epochs 0-9 unaugmented; 10-29 a `PitchShift` of -1, 0 or +1 semitone on half of the rows;
    from 30 one of -2..+2 on 80% of them, followed with `rhythm` by a `RhythmScale` that
    doubles or halves every duration and time step where the tokenizer's grid has the result.
    `max_shift` and `heavy_from` widen and advance the last stage: 5 and 20 lowered the
    block-1,536 chorale model's test NLL from 0.443 to 0.415 (docs/results.md, "Wider pitch
    shifts"). A row that a shift would take out of the tokenizer's range stays as it is. With
    the tokenizer's `key_tokens`, a shift transposes the KEY token too.

    Raises:
        ValueError: if `max_shift` is not an int >= 1 or `heavy_from` not an int > 10.
    """
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 1:
        raise ValueError(f"pitch_stages: max_shift must be an int >= 1, got {max_shift!r}")
    if isinstance(heavy_from, bool) or not isinstance(heavy_from, int) or heavy_from <= 10:
        raise ValueError(
            f"pitch_stages: heavy_from must be an int > 10 (the light stage's start epoch), "
            f"got {heavy_from!r}"
        )
    ids = {"note_ids": tokenizer.note_ids, "key_ids": tokenizer.key_ids}  # KEYs move along
    light = PitchShift((-1, 0, 1), **ids)
    shifts = tuple(range(-max_shift, max_shift + 1))
    heavy: Augmentation = PitchShift(shifts, **ids)
    if rhythm:
        heavy = Compose([heavy, RhythmScale.for_tokenizer(tokenizer, factors=(0.5, 2.0))])
    return three_stage(light, heavy, heavy_from=heavy_from, seed=seed)


def steps_for_budget(
    model: nn.Module, data: TokenDataset, batch_size: int, minutes: float, *, fraction: float = 0.7
) -> int:
    """Training steps that fill `fraction` of `minutes`, timed on a copy of the model.

    Four AdamW steps run on a deep copy (the model and its optimizer stay untouched); the median
    of the last three sets the pace. The rest of the budget is left for evaluations and the
    final samples. At least 20 steps, at most 2**62 (a budget whose step count
    overflows a float, 1e307 minutes say, gets that many).

    Raises:
        ValueError: if `minutes` is not a finite number > 0, `fraction` not in (0, 1], or
            `batch_size` not an int >= 1.
    """
    where = "steps_for_budget"
    _check_real(where, "minutes", minutes, "a finite number > 0", lambda x: 0 < x < math.inf)
    _check_real(where, "fraction", fraction, "a number in (0, 1]", lambda x: 0 < x <= 1)
    _check_int(where, "batch_size", batch_size, 1)
    trial = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(trial.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(4):
        inputs, targets = data.sample_batch(batch_size, generator=generator)
        start = time.perf_counter()
        trial(inputs, targets).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    per_step = sorted(times[1:])[1]
    return max(20, int(min(fraction * minutes * 60 / per_step, _MAX_STEPS)))

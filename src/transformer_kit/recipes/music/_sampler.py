"""`PieceSampler`: seeded, constrained sampling of whole pieces from a music model."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from numbers import Integral
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor, nn

from transformer_kit._numbers import _check_int, _check_real
from transformer_kit.sampling import Slide, generate
from transformer_kit.tokenization import MusicTokenizer, VoiceLeading
from transformer_kit.tokenization.events import Piece

__all__ = ["PieceSampler", "Voices", "length_bounds"]

Voices = Literal["fill", "mono", "grammar"]
"""The sampling constraint: `VoiceLeading` with every voice sounding (fill), one note per voice
only (mono), or the tokenizer's grammar alone."""


class PieceSampler:
    """Samples pieces from `<START>` under a voice-leading constraint, each call seeded.

    Called with no argument it returns `eval_samples` pieces of up to `eval_tokens` tokens from
    `seed`: the `sample_fn` of `metrics.music.MusicalEarlyStopping`. Every sample decodes
    (the constraint keeps the stream well formed); a row that never writes a note decodes to
    an empty piece.

    Args:
        model: maps ids to logits, as `sampling.generate` takes it; the attribute `model` may
            be replaced (an `Ensemble`, a `pack_float16_linears` copy).
        tokenizer: the `MusicTokenizer` of the model's ids.
        voices: the constraint (see `Voices`).
        min_notes: with `VoiceLeading`, no `<END>` before this many notes.
        max_notes: with `VoiceLeading`, end the piece at the first chance once this many
            notes are written (None: when the model ends it); see `VoiceLeading`. A sequence
            of note counts (the training pieces' lengths, say) gives each sample its own
            maximum, drawn from it with the call's seed and raised to at least max(1,
            min_notes), so that the samples' lengths follow those counts rather than one cap
            (docs/results.md, "Drawing each piece's length"). `timed` draws none.
        temperature, top_k: as in `generate`.
        eval_samples, eval_tokens, seed: what a call with no argument samples.
        slide: as in `generate`. "recompute" (the default) lets a RoPE model attend to the
            whole sample, past the block_size it was trained on; "rolling" keeps each model to
            its own window, which predicts better but ends fewer pieces (docs/results.md,
            "Past the training window").
        keys: with a tokenizer that has KEY tokens, the key signature (sharps, -7..7) each
            sample opens in: None lets the model draw it, an int sets it for every sample, and
            a sequence (the training pieces' keys, say) gives each sample one drawn from it
            with the call's seed. A model trained on pitch-shifted pieces draws keys the
            shifts spread over all twelve; drawing them from the pieces' own keys keeps the
            samples in the keys of the corpus, which on the chorales scored no better than
            the model's own draw (docs/results.md, "The corpus's keys").
        end_on_fermata: with `VoiceLeading` and a tokenizer with FERMATA tokens, end pieces
            only on a chord that opens with `<FERMATA>` (a cadence), as the chorales do; the
            maximum then ends a piece at its next marked chord whose voices end together.

    Raises:
        ValueError: if `voices` is not one of `Voices`, `slide` not one of `Slide`, a count
            is not a positive int, `temperature` not a finite number >= 0, `top_k` not None or
            an int >= 1, `min_notes` not an int >= 0 (`VoiceLeading`'s check;
            "grammar" ignores it), or `max_notes` is not None, an int >= max(1, min_notes) or
            a non-empty sequence of ints >= 0, or `keys` is given for a tokenizer without
            KEY tokens or is not None, an int in [-7, 7] or a non-empty sequence of them,
            or `end_on_fermata` is not a bool or is True for a tokenizer without FERMATA
            tokens (`VoiceLeading`'s check; "grammar" ignores it).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: MusicTokenizer,
        *,
        voices: Voices = "fill",
        min_notes: int = 0,
        max_notes: int | Sequence[int] | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        eval_samples: int = 4,
        eval_tokens: int = 600,
        seed: int = 0,
        slide: Slide = "recompute",
        keys: int | Sequence[int] | None = None,
        end_on_fermata: bool = False,
    ) -> None:
        if voices not in ("fill", "mono", "grammar"):
            raise ValueError(
                f"PieceSampler: voices must be 'fill', 'mono' or 'grammar', got {voices!r}"
            )
        for name, count in (("eval_samples", eval_samples), ("eval_tokens", eval_tokens)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"PieceSampler: {name} must be an int >= 1, got {count!r}")
        if slide not in get_args(Slide):
            raise ValueError(f"PieceSampler: slide must be one of {get_args(Slide)}, got {slide!r}")
        # Checked now, not at the first sample of a training run's evaluation.
        finite = "a finite number >= 0 (0: greedy)"
        _check_real("PieceSampler", "temperature", temperature, finite, lambda x: 0 <= x < math.inf)
        if top_k is not None:
            _check_int("PieceSampler", "top_k", top_k, 1, "None or an int >= 1")
        self.keys: tuple[int, ...] | None = _opening_keys(keys, tokenizer)
        """None (the model draws each key), or the key signatures each sample draws one from."""
        self._key_ids = (
            None if self.keys is None else np.array([tokenizer.key_id(k) for k in self.keys])
        )
        self.model, self.tokenizer = model, tokenizer
        self.voices, self.temperature, self.top_k = voices, temperature, top_k
        self.eval_samples, self.eval_tokens, self.seed = eval_samples, eval_tokens, seed
        self.slide = slide
        self.min_notes = 0 if voices == "grammar" else min_notes
        drawn = None if voices == "grammar" else _drawn_lengths(max_notes)
        fixed: int | None = None  # the maximum of `rule`
        if voices != "grammar" and drawn is None:
            if not VoiceLeading.valid_max_notes(max_notes, min_notes):
                raise ValueError(
                    f"PieceSampler: max_notes must be None, an int >= max(1, min_notes) "
                    f"(min_notes={min_notes}) or a sequence of ints >= 0, got {max_notes!r}"
                )
            fixed = max_notes
        self.max_notes: int | tuple[int, ...] | None = fixed if drawn is None else drawn
        """None, one maximum for every sample, or the note counts each sample draws one from."""
        self.rule = (
            tokenizer.allowed_next
            if voices == "grammar"
            else VoiceLeading(
                tokenizer,
                fill=voices == "fill",
                min_notes=min_notes,
                max_notes=fixed,
                end_on_fermata=end_on_fermata,
            )
        )
        self.end_on_fermata = voices != "grammar" and end_on_fermata
        if drawn is not None:
            most = "-len" + hashlib.sha1(repr(drawn).encode()).hexdigest()[:6]
        else:
            most = "" if fixed is None else f"-{fixed}"
        keyed = ""
        if self.keys is not None:
            keyed = (
                f"-key{self.keys[0]}"
                if len(set(self.keys)) == 1
                else "-keys" + hashlib.sha1(repr(self.keys).encode()).hexdigest()[:6]
            )
        rule_name = "grammar" if voices == "grammar" else f"{voices}{min_notes}{most}"
        self.rule_name = rule_name + keyed + ("-cadence" if self.end_on_fermata else "")
        """Names the constraint in folder names: grammar, fill145, fill145-373, fill145-len206302
        (maxima drawn from the lengths whose hash is 206302: the chorales'), mono0, and with
        `keys` a suffix: -key2 (every sample in 2 sharps), -keys1a2b3c (drawn from keys); with
        `end_on_fermata`, -cadence last."""

    def ids(self, n: int, tokens: int, *, seed: int, stop: bool = True) -> Tensor:
        """`n` rows of `<START>` and up to `tokens` more, (n, 1 + tokens'); `<END>` stops a row.

        With `keys`, each row opens `<START> <KEY:k>` and `tokens` more follow, (n, 2 + tokens').
        With `stop=False` nothing ends a row, and drawn maxima are not drawn (`rule` applies).
        """
        tok = self.tokenizer
        rule = (
            self._drawn_rules(n, seed) if stop and isinstance(self.max_notes, tuple) else self.rule
        )
        prompt = torch.full((n, 1), tok.start_id)
        if self._key_ids is not None:  # a stream of its own, so the lengths drawn stay the same
            drawn = np.random.default_rng([seed % 2**64, 1]).choice(self._key_ids, size=n)
            prompt = torch.cat([prompt, torch.from_numpy(drawn).view(n, 1)], dim=1)
        return generate(
            self.model,
            prompt,
            tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            allowed_next=rule,
            stop_ids=[tok.end_id] if stop else (),
            pad_id=tok.pad_id,
            generator=torch.Generator().manual_seed(seed),
            slide=self.slide,
        )

    def _drawn_rules(self, n: int, seed: int) -> list[VoiceLeading]:
        """One `VoiceLeading` per row, each with a maximum drawn from `max_notes` by `seed`."""
        assert isinstance(self.max_notes, tuple)
        least = max(1, self.min_notes)
        draws = np.random.default_rng(seed % 2**64).choice(np.array(self.max_notes), size=n)
        caps = [max(least, int(d)) for d in draws]
        fill = self.voices == "fill"
        rules = {  # rows that draw the same maximum share a rule
            most: VoiceLeading(
                self.tokenizer,
                fill=fill,
                min_notes=self.min_notes,
                max_notes=most,
                end_on_fermata=self.end_on_fermata,
            )
            for most in set(caps)
        }
        return [rules[most] for most in caps]

    def pieces(self, n: int, tokens: int, *, seed: int) -> list[Piece]:
        """`n` decoded samples; empty pieces stay in (the early stopping scores how many decode)."""
        return [self.tokenizer.decode(row) for row in self.ids(n, tokens, seed=seed).tolist()]

    def __call__(self) -> list[Piece]:
        return self.pieces(self.eval_samples, self.eval_tokens, seed=self.seed)

    def timed(self, tokens: int = 1000, *, seed: int = 0) -> tuple[Tensor, float]:
        """One row of `tokens` tokens (no stop) and the seconds they took, after a warm-up.

        The first sampling call of a process pays one-time costs (allocations, kernel choice)
        that are not the per-token cost being timed, so 32 tokens are drawn first. A sampler
        with drawn maxima (a sequence `max_notes`) times its rule without one.
        """
        self.ids(1, 32, seed=seed, stop=False)
        start = time.perf_counter()
        ids = self.ids(1, tokens, seed=seed, stop=False)
        return ids, time.perf_counter() - start


def _opening_keys(keys: object, tokenizer: MusicTokenizer) -> tuple[int, ...] | None:
    """`keys` as a tuple of key signatures, or None; see `PieceSampler`.

    Raises:
        ValueError: if `keys` is given for a tokenizer without KEY tokens, or is not None, an
            int in [-7, 7] or a non-empty sequence of them.
    """
    if keys is None:
        return None
    if not tokenizer.key_tokens:
        raise ValueError(
            f"PieceSampler: keys needs a tokenizer with KEY tokens (key_tokens=True), got "
            f"keys={keys!r:.60} for a tokenizer without them"
        )
    several = isinstance(keys, (Sequence, np.ndarray)) and not isinstance(keys, (str, bytes))
    items: list[Any] = list(keys) if several else [keys]  # type: ignore[call-overload]
    allowed = "None, an int in [-7, 7] (sharps; negative: flats) or a non-empty sequence of them"
    bad = [
        k for k in items if isinstance(k, bool) or not isinstance(k, Integral) or abs(int(k)) > 7
    ]
    if not items or bad:
        found = "an empty sequence" if not items else f"{bad[0]!r}" + (" in it" if several else "")
        raise ValueError(f"PieceSampler: keys must be {allowed}, got {found}")
    return tuple(int(k) for k in items)


def _drawn_lengths(max_notes: object) -> tuple[int, ...] | None:
    """`max_notes` as a tuple of note counts when it is a sequence (or array) of them, else None.

    Raises:
        ValueError: if the sequence is empty or holds anything but ints >= 0.
    """
    if isinstance(max_notes, (str, bytes)) or not isinstance(max_notes, (Sequence, np.ndarray)):
        return None
    items = list(max_notes)
    bad = [x for x in items if isinstance(x, bool) or not isinstance(x, Integral) or x < 0]
    if not items or bad:
        raise ValueError(
            "PieceSampler: max_notes as a sequence must hold one or more ints >= 0, got "
            + ("an empty sequence" if not items else f"{bad[0]!r} in it")
        )
    return tuple(int(x) for x in items)


def length_bounds(
    pieces: Sequence[Piece], min_notes: int | None = None, max_notes: int | None = None
) -> tuple[int, int | tuple[int, ...] | None]:
    """`(min_notes, max_notes)` for a `PieceSampler` whose samples should end as `pieces` do.

    `min_notes=None` picks the 5th percentile of the pieces' note counts. `max_notes=None`
    returns the note counts themselves, so that each sample draws its own maximum from them
    (see `PieceSampler`); `max_notes=0` means no maximum (None). Given values are checked and
    returned.

    Raises:
        ValueError: if `pieces` is empty (and its lengths are asked for), `min_notes` is not
            None or an int >= 0, or `max_notes` not None, 0 or an int >= max(1, min_notes).
    """
    if min_notes is not None and (
        isinstance(min_notes, bool) or not isinstance(min_notes, int) or min_notes < 0
    ):
        raise ValueError(f"length_bounds: min_notes must be None or an int >= 0, got {min_notes!r}")
    if (min_notes is None or max_notes is None) and not pieces:
        raise ValueError("length_bounds: pieces is empty, so there are no lengths to take")
    lengths = tuple(len(piece) for piece in pieces)
    low = int(np.percentile(lengths, 5)) if min_notes is None else min_notes
    if max_notes is None:
        return low, lengths
    if type(max_notes) is int and max_notes == 0:  # no maximum
        return low, None
    if not VoiceLeading.valid_max_notes(max_notes, low):
        raise ValueError(
            f"length_bounds: max_notes must be None, 0 (no maximum) or an int >= max(1, "
            f"min_notes) (min_notes={low}), got {max_notes!r}"
        )
    return low, max_notes

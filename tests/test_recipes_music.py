"""transformer_kit.recipes.music: the parts of examples/bach.py, each on a tiny model."""

from __future__ import annotations

import doctest
import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from transformer_kit.augment import Compose, PitchShift, RhythmScale
from transformer_kit.checkpoint import CheckpointError, CheckpointManager
from transformer_kit.data import TokenDataset
from transformer_kit.metrics import music
from transformer_kit.models import FeatureSum, VoiceStateFeatures
from transformer_kit.recipes import music as recipe
from transformer_kit.tokenization import MusicTokenizer, NoteEvent, VoiceLeading

TINY = {"n_layer": 1, "n_head": 2, "d_model": 16, "d_ff": 32, "block_size": 64}


def _chorale(seed: int, bars: int = 2) -> list[NoteEvent]:
    """Four voices in whole-beat notes, each a random walk of its own (a melody per seed)."""
    rng = random.Random(seed)
    base = 55 + seed % 9
    events = []
    for voice, start in enumerate((base + 12, base + 7, base + 4, base - 12), start=1):
        pitch = start
        for beat in range(4 * bars):
            events.append(NoteEvent(pitch, voice, float(beat), 1.0, bar=beat // 4))
            pitch = max(start - 5, min(start + 5, pitch + rng.choice((-2, -1, 1, 2))))
    return events


def _splits() -> dict[str, list[list[NoteEvent]]]:
    return {
        "train": [_chorale(0), _chorale(1), _chorale(2)],
        "val": [_chorale(3)],
        "test": [_chorale(4)],
    }


def _evaluation(tok: MusicTokenizer) -> dict[str, object]:
    splits = _splits()
    return {
        "streams": {name: recipe.encode_pieces(tok, pieces) for name, pieces in splits.items()},
        "holdout": splits["val"] + splits["test"],
        "profile": music.MusicProfile.from_pieces(splits["train"]),
        "block_size": 32,
        "batch_size": 4,
        "samples": 3,
        "tokens": 60,
    }


def test_module_doctest_runs():
    assert doctest.testmod(recipe).failed == 0


def test_load_splits_refuses_a_folder_too_small_for_three_splits(tmp_path):
    pytest.importorskip("music21")
    from transformer_kit.data import write_midi

    for i in range(2):
        write_midi(_chorale(i), tmp_path / f"piece_{i}.mid")
    with pytest.raises(ValueError, match="has too few pieces: no"):
        recipe.load_splits(tmp_path)


def test_fit_tokenizer_covers_the_pieces_and_two_semitones_more():
    pieces = [[NoteEvent(50, 1, 0.0, 1.0), NoteEvent(70, 3, 0.0, 1.0)], [NoteEvent(61, 2, 1, 1)]]
    tok = recipe.fit_tokenizer(pieces)
    assert [tok.vocab.id_to_token(i) for i in (tok.note_ids[0], tok.note_ids[-1])] == [
        "<NOTE:C3>",  # MIDI 48 = 50 - 2
        "<NOTE:C5>",  # MIDI 72 = 70 + 2
    ]
    assert len(tok.voice_ids) == 3
    edge = recipe.fit_tokenizer([[NoteEvent(1, 1, 0.0, 1.0), NoteEvent(126, 1, 1.0, 1.0)]])
    assert len(edge.note_ids) == 128  # MIDI 0..127: the margin is clamped at both ends
    with pytest.raises(ValueError, match="pieces must hold at least one note"):
        recipe.fit_tokenizer([[], []])
    assert not tok.key_tokens
    keyed = recipe.fit_tokenizer(pieces, key_tokens=True)
    assert keyed.key_tokens and keyed.vocab.tokens[: len(tok.vocab)] == tok.vocab.tokens
    held = recipe.fit_tokenizer(pieces, key_tokens=True, fermata_tokens=True)
    assert held.fermata_tokens and not keyed.fermata_tokens
    assert held.vocab.tokens == (*keyed.vocab.tokens, "<FERMATA>")


def test_encode_pieces_is_the_tokenizer_streams_back_to_back():
    tok = MusicTokenizer()
    pieces = _splits()["train"]
    stream = recipe.encode_pieces(tok, pieces)
    assert stream.dtype == np.int64
    assert stream.tolist() == [i for piece in pieces for i in tok.encode(piece)]
    assert recipe.encode_pieces(tok, []).shape == (0,)


@pytest.mark.parametrize("voice_features", [False, True])
def test_music_gpt_uses_rope_and_the_tokenizer_features(voice_features):
    tok = MusicTokenizer()
    model = recipe.music_gpt(tok, **TINY, voice_features=voice_features)
    config = model.config
    assert (config.vocab_size, config.position, config.max_position) == (
        len(tok.vocab),
        "rope",
        4096,
    )
    assert config.pad_id == tok.pad_id and config.d_model == 16
    features = model.position_features
    assert isinstance(features, FeatureSum) == voice_features
    if voice_features:
        assert isinstance(features.parts[1], VoiceStateFeatures)
    ids = torch.tensor([recipe.encode_pieces(tok, [_chorale(0)])[:40].tolist()])
    assert model(ids).logits.shape == (1, 40, len(tok.vocab))


def _save_run(folder, tok, model, *, step, extra=None, voice_features=False):
    """A run folder as examples/bach.py leaves it: run.json, tokenizer.json, checkpoints/.

    Steps 1 .. `step` are each saved (periodic checkpoints too), the best at `step`.
    """
    folder.mkdir()
    tok.save(folder / "tokenizer.json")
    shape = {**TINY, "lr": 0.1, "voice_features": voice_features}
    (folder / "run.json").write_text(json.dumps(shape))
    manager = CheckpointManager(
        folder / "checkpoints", monitor="music_combined", mode="max", every_steps=1, keep_last=2
    )
    for at in range(1, step + 1):
        state = {"model": model.state_dict(), "step": at, **(extra or {})}
        manager.save(state, step=at, metrics={"music_combined": at / step})


def test_load_run_model_rebuilds_the_shape_and_prefers_the_weight_average(tmp_path):
    tok = MusicTokenizer()
    torch.manual_seed(0)
    model = recipe.music_gpt(tok, **TINY)
    _save_run(tmp_path / "plain", tok, model, step=7)
    loaded, step = recipe.load_run_model(tmp_path / "plain", "best", tok)
    assert step == 7 and not loaded.training and loaded.position_features is not None
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name

    average = {k: torch.full_like(v, 0.25) for k, v in model.state_dict().items()}
    _save_run(tmp_path / "ema", tok, model, step=3, extra={"ema": {"weights": average}})
    loaded, _ = recipe.load_run_model(tmp_path / "ema", "last")
    assert all(torch.all(v == 0.25) for v in loaded.state_dict().values())

    with pytest.raises(ValueError, match="its tokenizer differs"):
        recipe.load_run_model(tmp_path / "plain", "best", MusicTokenizer(voices=2))
    with pytest.raises(FileNotFoundError, match="no run.json and tokenizer.json"):
        recipe.load_run_model(tmp_path, "best")
    with pytest.raises(FileNotFoundError, match="no checkpoint 'step-00000001'"):
        recipe.load_run_model(tmp_path / "plain", "step-00000001")  # rotated out (keep_last 2)
    assert recipe.load_run_model(tmp_path / "plain", "step-00000006.pt")[1] == 6

    _save_run(tmp_path / "voices", tok, recipe.music_gpt(tok, **TINY, voice_features=True),
              step=1, voice_features=True)  # fmt: skip
    voiced, _ = recipe.load_run_model(tmp_path / "voices", "last")
    assert isinstance(voiced.position_features, FeatureSum)  # the shape comes from run.json

    keyed = MusicTokenizer(key_tokens=True)  # the option comes back from tokenizer.json
    _save_run(tmp_path / "keyed", keyed, recipe.music_gpt(keyed, **TINY), step=1)
    assert recipe.load_run_model(tmp_path / "keyed", "last")[0].config.vocab_size == 105
    with pytest.raises(ValueError, match="its tokenizer differs"):
        recipe.load_run_model(tmp_path / "keyed", "last", tok)

    (tmp_path / "bare").mkdir()
    tok.save(tmp_path / "bare" / "tokenizer.json")
    (tmp_path / "bare" / "run.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no checkpoint 'best'"):
        recipe.load_run_model(tmp_path / "bare", "best")  # no checkpoints/ at all
    assert not (tmp_path / "bare" / "checkpoints").exists()  # and none was made
    (tmp_path / "bare" / "checkpoints").mkdir()
    (tmp_path / "bare" / "checkpoints" / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a checkpoint manifest"):
        recipe.load_run_model(tmp_path / "bare", "best")
    best = tmp_path / "plain" / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:-10] + bytes(10))
    with pytest.raises(CheckpointError, match="best.pt"):
        recipe.load_run_model(tmp_path / "plain", "best")


def test_run_defaults_resume_everything_but_the_command_and_evaluate_the_shape(tmp_path):
    assert recipe.run_defaults(tmp_path) == {}  # no run.json: nothing to go on with
    saved = {
        "out_dir": "runs/a", "cache_dir": "/c", "resume": False, "evaluate": None,
        "ensemble": None, "midi_dir": "midi/", "d_model": 64, "block_size": 128,
        "batch_size": 3, "temperature": 0.8, "max_steps": 90,
    }  # fmt: skip
    (tmp_path / "run.json").write_text(json.dumps(saved))
    resumed = recipe.run_defaults(tmp_path)
    assert resumed == {
        "voice_features": False, "key_token": False, "fermata_token": False,  # a run older
        "midi_dir": "midi/", "d_model": 64, "block_size": 128, "batch_size": 3,
        "temperature": 0.8, "max_steps": 90,
    }  # fmt: skip
    (tmp_path / "run.json").write_text(json.dumps({**saved, "seed": 7}))
    evaluated = recipe.run_defaults(tmp_path, evaluate=True)
    # The model's shape and the data split, so the held-out pieces are the run's; no sampler.
    assert evaluated == {
        "voice_features": False, "key_token": False, "fermata_token": False, "d_model": 64,
        "block_size": 128, "midi_dir": "midi/", "seed": 7,
    }  # fmt: skip
    (tmp_path / "run.json").write_text(json.dumps({**saved, "voice_features": True}))
    assert recipe.run_defaults(tmp_path)["voice_features"] is True
    (tmp_path / "run.json").write_text(json.dumps({**saved, "key_token": True}))
    assert recipe.run_defaults(tmp_path)["key_token"] is True  # the same tokenizer again
    assert recipe.run_defaults(tmp_path, evaluate=True)["key_token"] is True
    (tmp_path / "run.json").write_text(json.dumps({**saved, "fermata_token": True}))
    assert recipe.run_defaults(tmp_path)["fermata_token"] is True
    assert recipe.run_defaults(tmp_path, evaluate=True)["fermata_token"] is True
    for text, match in (("[1, 2]", "JSON object, got list"), ("{oops", "not valid JSON")):
        (tmp_path / "run.json").write_text(text)
        with pytest.raises(ValueError, match=match) as caught:
            recipe.run_defaults(tmp_path)
        assert "run.json" in str(caught.value)


def test_piece_sampler_is_seeded_and_every_sample_decodes():
    tok = MusicTokenizer()
    torch.manual_seed(1)
    model = recipe.music_gpt(tok, **TINY).eval()
    sampler = recipe.PieceSampler(
        model, tok, voices="fill", min_notes=3, temperature=0.9, eval_samples=3, eval_tokens=48
    )
    assert isinstance(sampler.rule, VoiceLeading) and sampler.rule_name == "fill3"
    first, again, other = (sampler.ids(3, 48, seed=s) for s in (5, 5, 6))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert (first[:, 0] == tok.start_id).all()
    pieces = sampler()
    assert len(pieces) == 3 and all(pieces)  # three notes at least before any <END>
    ids, seconds = sampler.timed(20, seed=2)
    assert ids.shape == (1, 21) and seconds > 0
    grammar = recipe.PieceSampler(model, tok, voices="grammar", min_notes=9, max_notes=12)
    assert (grammar.rule_name, grammar.min_notes, grammar.max_notes) == ("grammar", 0, None)
    assert grammar.rule == tok.allowed_next


def test_piece_sampler_max_notes_ends_every_piece_near_it():
    tok = MusicTokenizer()
    torch.manual_seed(1)
    model = recipe.music_gpt(tok, **TINY).eval()
    filled = recipe.PieceSampler(model, tok, min_notes=3, max_notes=4)
    assert filled.rule_name == "fill3-4" and filled.rule.max_notes == 4  # type: ignore[union-attr]
    # One note per voice (no fill): a piece may end after any note from the 4th on (min_notes),
    # so with max_notes 4 it must end right there, while without it the model writes on.
    capped = recipe.PieceSampler(model, tok, voices="mono", min_notes=4, max_notes=4)
    free = recipe.PieceSampler(model, tok, voices="mono", min_notes=4)
    assert [len(p) for p in capped.pieces(8, 120, seed=3)] == [4] * 8
    assert max(len(p) for p in free.pieces(8, 120, seed=3)) > 4
    with pytest.raises(ValueError, match=r"max_notes must be None, an int >= max\(1, min_notes\) "
                       r"\(min_notes=3\) or a sequence of ints >= 0, got 2"):  # fmt: skip
        recipe.PieceSampler(model, tok, min_notes=3, max_notes=2)


class _NeverEnds(nn.Module):
    """A model that never picks `<END>` by itself: its logit is 1e4 lower."""

    def __init__(self, model: nn.Module, end_id: int) -> None:
        super().__init__()
        self.model, self.end_id = model, end_id

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.model(ids).logits.clone()
        logits[..., self.end_id] -= 1e4
        return logits


def test_piece_sampler_draws_each_samples_max_notes_from_the_lengths():
    tok = MusicTokenizer()
    torch.manual_seed(1)
    model = _NeverEnds(recipe.music_gpt(tok, **TINY).eval(), tok.end_id)
    # One note per voice: a piece may end after any note, so each ends at exactly its maximum.
    lengths = (3, 5, 1, 8)  # 1 is raised to min_notes = 2
    sampler = recipe.PieceSampler(model, tok, voices="mono", min_notes=2, max_notes=lengths)
    assert sampler.max_notes == lengths and sampler.rule.max_notes is None  # type: ignore[union-attr]
    assert re.fullmatch(r"mono2-len[0-9a-f]{6}", sampler.rule_name)
    for seed in (3, 4):
        drawn = np.random.default_rng(seed).choice(lengths, size=12)  # each row's maximum
        got = [len(p) for p in sampler.pieces(12, 150, seed=seed)]
        assert got == [max(2, int(n)) for n in drawn]
        assert len(set(got)) > 1  # rows differ, so each drew its own
    other = recipe.PieceSampler(model, tok, voices="mono", min_notes=2, max_notes=[3, 5, 8])
    assert other.rule_name != sampler.rule_name  # other lengths, another folder
    for same in ([3, 5, 1, 8], np.array(lengths)):  # a list or an array names the same rule
        alike = recipe.PieceSampler(model, tok, voices="mono", min_notes=2, max_notes=same)
        assert alike.max_notes == lengths and alike.rule_name == sampler.rule_name
    # With no minimum, a drawn 0 is raised to 1 note; a negative seed draws as torch's does.
    single = recipe.PieceSampler(model, tok, voices="mono", max_notes=(0,))
    assert [len(p) for p in single.pieces(4, 40, seed=-3)] == [1] * 4
    ids, _ = sampler.timed(60, seed=2)  # timed draws no maximum: the model writes on
    assert len(tok.decode(ids[0].tolist())) > 8
    for bad, match in [
        ((), "an empty sequence"),
        ((4, -1), "-1 in it"),
        ([4, True], "True in it"),
        ((4, 2.5), "2.5 in it"),
    ]:
        with pytest.raises(ValueError, match="max_notes as a sequence must hold one or more ints"):
            recipe.PieceSampler(model, tok, max_notes=bad)
        with pytest.raises(ValueError, match=re.escape(match)):
            recipe.PieceSampler(model, tok, max_notes=bad)
    for bad in ("373", 5.0, True):
        with pytest.raises(ValueError, match=f"or a sequence of ints >= 0, got {bad!r}"):
            recipe.PieceSampler(model, tok, max_notes=bad)  # type: ignore[arg-type]


def test_piece_sampler_opens_each_sample_in_a_given_or_drawn_key():
    tok = MusicTokenizer(key_tokens=True)
    torch.manual_seed(1)
    model = _NeverEnds(recipe.music_gpt(tok, **TINY).eval(), tok.end_id)
    fixed = recipe.PieceSampler(model, tok, voices="mono", min_notes=2, keys=-3)
    ids = fixed.ids(4, 30, seed=5)
    assert ids.shape[1] <= 32 and (ids[:, 0] == tok.start_id).all()
    assert (ids[:, 1] == tok.key_id(-3)).all() and fixed.rule_name == "mono2-key-3"
    assert all(e.key == -3 for piece in fixed.pieces(4, 30, seed=5) for e in piece)
    # Drawn per sample from a stream of its own: the drawn maxima stay what they were.
    keys, lengths = (-2, 0, 4, 4), (3, 5, 8)
    drawn = recipe.PieceSampler(
        model, tok, voices="mono", min_notes=2, max_notes=lengths, keys=list(keys)
    )
    plain = recipe.PieceSampler(model, tok, voices="mono", min_notes=2, max_notes=lengths)
    assert drawn.keys == keys and re.fullmatch(
        r"mono2-len[0-9a-f]{6}-keys[0-9a-f]{6}", drawn.rule_name
    )
    for seed in (3, 4):
        rows = drawn.ids(12, 60, seed=seed)
        expected = np.random.default_rng([seed, 1]).choice(keys, size=12)
        assert rows[:, 1].tolist() == [tok.key_id(int(k)) for k in expected]
        assert len(set(expected.tolist())) > 1  # rows differ, so each drew its own
        got = [len(p) for p in drawn.pieces(12, 60, seed=seed)]
        assert got == [len(p) for p in plain.pieces(12, 60, seed=seed)]
        assert torch.equal(rows, drawn.ids(12, 60, seed=seed))  # seeded
    ids, _ = drawn.timed(20, seed=2)
    assert ids.shape == (1, 22) and ids[0, 1].item() in {tok.key_id(k) for k in keys}
    for bad, match in [
        (8, "got 8"),
        (-8, "got -8"),
        ([], "got an empty sequence"),
        ([1, True], "got True in it"),
        ((0, 2.0), "got 2.0 in it"),
        ("2", "got '2'"),
    ]:
        with pytest.raises(ValueError, match=r"keys must be None, an int in \[-7, 7\] .*" + match):
            recipe.PieceSampler(model, tok, keys=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keys needs a tokenizer with KEY tokens .*got keys=2"):
        recipe.PieceSampler(model, MusicTokenizer(), keys=2)


class _Marks(_NeverEnds):
    """`_NeverEnds` that also writes `<FERMATA>` often: its logit is raised by `bonus`."""

    def __init__(self, model: nn.Module, end_id: int, fermata_id: int, bonus: float) -> None:
        super().__init__(model, end_id)
        self.fermata_id, self.bonus = fermata_id, bonus

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = super().forward(ids)
        logits[..., self.fermata_id] += self.bonus
        return logits


def test_piece_sampler_with_end_on_fermata_ends_every_piece_on_a_marked_chord():
    tok = MusicTokenizer(fermata_tokens=True)
    torch.manual_seed(1)
    model = _Marks(recipe.music_gpt(tok, **TINY).eval(), tok.end_id, tok.fermata_ids[0], 2.0)
    lengths = (6, 9, 12)
    cadence = recipe.PieceSampler(
        model, tok, voices="mono", min_notes=2, max_notes=lengths, end_on_fermata=True
    )
    plain = recipe.PieceSampler(model, tok, voices="mono", min_notes=2, max_notes=lengths)
    assert cadence.rule_name == plain.rule_name + "-cadence" and cadence.end_on_fermata

    def last_onset_held(piece: list[NoteEvent]) -> bool:
        last = max(e.onset for e in piece)
        return all(e.fermata for e in piece if e.onset == last)

    ended = {"cadence": [], "plain": []}
    for name, sampler in (("cadence", cadence), ("plain", plain)):
        for row in sampler.ids(16, 150, seed=3).tolist():
            if tok.end_id in row:
                ended[name].append(last_onset_held(tok.decode(row)))
    assert len(ended["cadence"]) >= 8 and all(ended["cadence"])
    assert not all(ended["plain"])  # without the rule some pieces end elsewhere
    assert not recipe.PieceSampler(model, tok, voices="grammar", end_on_fermata=True).end_on_fermata
    with pytest.raises(ValueError, match="end_on_fermata=True needs a tokenizer with FERMATA"):
        recipe.PieceSampler(model, MusicTokenizer(), end_on_fermata=True)


def test_length_bounds_are_the_pieces_percentile_and_lengths_unless_given():
    pieces = [[NoteEvent(60, 1, float(k), 1.0)] * n for k, n in enumerate(range(1, 101))]
    lengths = tuple(range(1, 101))  # each sample draws its maximum from these
    # numpy's linear 5th percentile of 1..100: 5.95, truncated.
    assert recipe.length_bounds(pieces) == (5, lengths)
    assert recipe.length_bounds(pieces, 120) == (120, lengths)  # the sampler raises the draws
    assert recipe.length_bounds(pieces, 10, 95) == (10, 95)
    assert recipe.length_bounds(pieces, None, 50) == (5, 50)
    assert recipe.length_bounds(pieces, 3, 0) == (3, None)  # 0: no maximum
    assert recipe.length_bounds([], 3, 7) == (3, 7)  # nothing to take a percentile of, or to need
    assert recipe.length_bounds([[]] * 4) == (0, (0, 0, 0, 0))
    for args, match in [
        ((pieces, -1), "min_notes must be None or an int >= 0, got -1"),
        ((pieces, True), "min_notes must be None or an int >= 0, got True"),
        (
            (pieces, 10, 9),
            r"max_notes must be None, 0 \(no maximum\) or an int >= max\(1, "
            r"min_notes\) \(min_notes=10\), got 9",
        ),
        ((pieces, None, -2), r"\(min_notes=5\), got -2"),
        ((pieces, None, 2.5), r"got 2.5"),
        (([], None, 7), "pieces is empty"),
    ]:
        with pytest.raises(ValueError, match=match):
            recipe.length_bounds(*args)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"voices": "solo"}, "voices must be 'fill', 'mono' or 'grammar', got 'solo'"),
        ({"eval_samples": 0}, "eval_samples must be an int >= 1, got 0"),
        ({"eval_tokens": 2.5}, "eval_tokens must be an int >= 1, got 2.5"),
        ({"slide": "window"}, r"slide must be one of \('recompute', 'rolling'\), got 'window'"),
        # A bad min_notes gets its own error, whatever max_notes is.
        ({"min_notes": 2.5, "max_notes": 9}, "min_notes must be an int >= 0, got 2.5"),
        ({"min_notes": -1}, "min_notes must be an int >= 0, got -1"),
        ({"min_notes": True}, "min_notes must be an int >= 0, got True"),
        # Refused at construction, not at the first evaluation of a training run.
        ({"temperature": -1.0}, r"temperature must be a finite number >= 0 \(0: greedy\), got -1"),
        ({"temperature": math.nan}, "temperature must be a finite number >= 0 .*got nan"),
        ({"temperature": True}, "temperature must be a finite number >= 0 .*got True"),
        ({"top_k": 0}, "top_k must be None or an int >= 1, got 0"),
        ({"top_k": 2.5}, "top_k must be None or an int >= 1, got 2.5"),
    ],
)
def test_piece_sampler_names_a_bad_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        recipe.PieceSampler(nn.Identity(), MusicTokenizer(), **kwargs)


class _Uniform(nn.Module):
    """Zero logits everywhere: the cross-entropy of every target is ln(V)."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, ids, targets):
        logits = torch.zeros(*ids.shape, self.vocab)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return type("Out", (), {"loss": loss})()


def test_token_nll_weighs_windows_by_targets():
    assert recipe.token_nll(_Uniform(7), np.arange(50) % 7, block_size=8, batch_size=4) == (
        pytest.approx(math.log(7))
    )
    tok = MusicTokenizer()
    model = recipe.music_gpt(tok, **TINY).eval()
    stream = recipe.encode_pieces(tok, _splits()["train"])
    expected = []  # a hand loop over the same windows, token by token
    with torch.no_grad():
        for inputs, targets in TokenDataset(stream, 16).eval_batches(1):
            logits = model(inputs).logits
            expected += nn.functional.cross_entropy(
                logits.flatten(0, 1), targets.flatten(), reduction="none"
            ).tolist()
    got = recipe.token_nll(model, stream, block_size=16, batch_size=3)  # a short last batch
    assert got == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    with pytest.raises(ValueError, match="block_size=16 needs at least"):
        recipe.token_nll(model, stream[:16], block_size=16, batch_size=3)


def test_evaluate_music_draws_as_many_samples_as_held_out_pieces_by_default(tmp_path):
    # The overlaps of a smaller set run lower, so equal sizes make percent_of_bach fair.
    pytest.importorskip("music21")
    tok = MusicTokenizer()
    torch.manual_seed(2)
    model = recipe.music_gpt(tok, **TINY)
    sampler = recipe.PieceSampler(model, tok, voices="fill", min_notes=2, max_notes=[1, 4, 7])
    evaluation = {k: v for k, v in _evaluation(tok).items() if k != "samples"}
    assert len(evaluation["holdout"]) == 2
    results = recipe.evaluate_music(sampler, out_dir=tmp_path, seed=5, **evaluation)
    drawn = [p for p in sampler.pieces(2, 60, seed=7) if p]
    assert results["samples_per_set"] == 2
    assert results["samples"] == pytest.approx(music.corpus_summary(drawn))
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match=f"samples must be None or an int >= 1, got {bad}"):
            recipe.evaluate_music(sampler, out_dir=tmp_path, samples=bad, **evaluation)


def test_steps_for_budget_leaves_the_model_alone_and_scales_with_the_budget():
    tok = MusicTokenizer()
    model = recipe.music_gpt(tok, **TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = TokenDataset(recipe.encode_pieces(tok, _splits()["train"]), 32)
    small = recipe.steps_for_budget(model, data, 2, 1e-6)
    large = recipe.steps_for_budget(model, data, 2, 60.0)
    assert small == 20 and large > 1000  # a tiny step takes well under 2.5 s
    # fraction * minutes * 60 is inf in floats: capped, not an OverflowError from int(inf)
    assert recipe.steps_for_budget(model, data, 2, 1e307) == 2**62
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "args, match",
    [
        ((2, -1.0), "minutes must be a finite number > 0, got -1.0"),
        ((2, math.inf), "minutes must be a finite number > 0, got inf"),
        ((2, math.nan), "minutes must be a finite number > 0, got nan"),
        ((2, True), "minutes must be a finite number > 0, got True"),
        ((0, 4.0), "batch_size must be an int >= 1, got 0"),
        ((2.0, 4.0), "batch_size must be an int >= 1, got 2.0"),
    ],
)
def test_steps_for_budget_refuses_a_bad_budget_before_timing(args, match):
    tok = MusicTokenizer()
    data = TokenDataset(recipe.encode_pieces(tok, _splits()["train"]), 32)
    with pytest.raises(ValueError, match=f"steps_for_budget: {match}"):
        recipe.steps_for_budget(recipe.music_gpt(tok, **TINY), data, *args)
    with pytest.raises(ValueError, match=r"fraction must be a number in \(0, 1\], got 1.5"):
        recipe.steps_for_budget(recipe.music_gpt(tok, **TINY), data, 2, 4.0, fraction=1.5)


def test_pitch_stages_follow_the_seed_schedule():
    tok = MusicTokenizer()
    stages = recipe.pitch_stages(tok, seed=3).stages
    assert [(s.start_epoch, s.p) for s in stages] == [(0, 0.0), (10, 0.5), (30, 0.8)]
    assert stages[0].transform is None
    assert [type(s.transform) for s in stages[1:]] == [PitchShift, PitchShift]
    assert stages[1].transform.semitones == (-1, 0, 1)
    assert stages[2].transform.semitones == (-2, -1, 0, 1, 2)
    with_rhythm = recipe.pitch_stages(tok, rhythm=True).stages[2].transform
    assert isinstance(with_rhythm, Compose)
    assert [type(t) for t in with_rhythm.transforms] == [PitchShift, RhythmScale]
    assert with_rhythm.transforms[0].semitones == (-2, -1, 0, 1, 2)


def test_pitch_stages_move_the_key_token_with_the_notes():
    keyed = MusicTokenizer(key_tokens=True)
    stages = recipe.pitch_stages(keyed, rhythm=True).stages
    shifts = [stages[1].transform, stages[2].transform.transforms[0]]
    assert all(t.key_ids == keyed.key_ids == range(93, 105) for t in shifts)
    assert not recipe.pitch_stages(MusicTokenizer()).stages[1].transform.key_ids
    ids = torch.tensor([keyed.encode([NoteEvent(60, 1, 0.0, 1.0)])] * 16)  # C major
    out, _ = shifts[1](ids[:, :-1], ids[:, 1:], generator=torch.Generator().manual_seed(0))
    drawn = (out[:, 2] - ids[:, 2]).tolist()  # each row's shift
    assert len(set(drawn)) > 1
    assert out[:, 1].tolist() == [keyed.key_id((7 * k + 6) % 12 - 6) for k in drawn]
    both = MusicTokenizer(key_tokens=True, fermata_tokens=True)  # <FERMATA> stays in place
    shift = recipe.pitch_stages(both).stages[1].transform
    assert shift.key_ids == both.key_ids == range(93, 105) and both.fermata_ids == range(105, 106)
    ids = torch.tensor([both.encode([NoteEvent(60, 1, 0.0, 1.0, fermata=True)])] * 16)
    assert ids[0, 2] == both.fermata_ids.start
    out, _ = shift(ids[:, :-1], ids[:, 1:], generator=torch.Generator().manual_seed(0))
    assert (out[:, 2] == both.fermata_ids.start).all() and (out[:, 3] != ids[:, 3]).any()


def test_pitch_stages_widen_and_advance_the_last_stage():
    tok = MusicTokenizer()
    stages = recipe.pitch_stages(tok, max_shift=5, heavy_from=20, seed=3).stages
    assert [(s.start_epoch, s.p) for s in stages] == [(0, 0.0), (10, 0.5), (20, 0.8)]
    assert stages[1].transform.semitones == (-1, 0, 1)  # the light stage as the seed's
    assert stages[2].transform.semitones == tuple(range(-5, 6))
    wide = recipe.pitch_stages(tok, max_shift=5, heavy_from=20, seed=3)
    ids = torch.tensor(tok.encode([NoteEvent(60, 1, 0.0, 1.0), NoteEvent(64, 1, 1.0, 1.0)]))
    rows = ids.repeat(64, 1)
    out, _ = wide(rows, rows.clone(), epoch=25)
    note = ids[1].item()  # the first NOTE token
    moved = {int(v) - note for v in out[:, 1]}
    assert moved <= set(range(-5, 6)) and max(moved) >= 3 and min(moved) <= -3
    for kwargs, match in (
        ({"max_shift": 0}, "max_shift must be an int >= 1, got 0"),
        ({"max_shift": 2.0}, "max_shift must be an int >= 1, got 2.0"),
        ({"heavy_from": 10}, r"heavy_from must be an int > 10 \(the light stage's start"),
        ({"heavy_from": True}, "heavy_from must be an int > 10"),
    ):
        with pytest.raises(ValueError, match=match):
            recipe.pitch_stages(tok, **kwargs)


def test_evaluate_music_scores_samples_against_the_holdout(tmp_path):
    pytest.importorskip("music21")
    tok = MusicTokenizer()
    torch.manual_seed(2)
    model = recipe.music_gpt(tok, **TINY)
    sampler = recipe.PieceSampler(
        model, tok, voices="fill", min_notes=2, max_notes=[1, 4, 7], temperature=0.8
    )
    evaluation = _evaluation(tok)
    results = recipe.evaluate_music(
        sampler, out_dir=tmp_path / "eval", sets=2, seed=5, **evaluation
    )
    assert not model.training and results["decodable"] == 1.0
    profile = evaluation["profile"]
    # The samples come from seed + 2, the second set from seed + 2 + 1000.
    first = [p for p in sampler.pieces(3, 60, seed=7) if p]
    assert results["samples"] == pytest.approx(music.corpus_summary(first))
    second = [p for p in sampler.pieces(3, 60, seed=1007) if p]
    nll = recipe.token_nll(model, evaluation["streams"]["val"], block_size=32, batch_size=4)
    assert results["val_loss"] == pytest.approx(nll)
    bach = music.overall_score(evaluation["holdout"], evaluation["profile"])
    assert results["overall_score_bach"] == pytest.approx(bach)
    sets = results["percent_of_bach_sets"]
    assert len(sets) == 2 and sets[0] == pytest.approx(
        100 * results["overall_score_samples"] / bach
    )
    assert sets[1] == pytest.approx(100 * music.overall_score(second, profile) / bach)
    assert results["percent_of_bach_mean"] == pytest.approx(sum(sets) / 2)
    assert (results["voices"], results["min_notes"], results["temperature"]) == ("fill", 2, 0.8)
    assert results["max_notes"] == "drawn from 3 lengths (1-7, mean 4), at least 2"
    names = sorted(p.name for p in (tmp_path / "eval" / "samples").iterdir())
    assert names == ["sample_00.mid", "sample_00.musicxml", "sample_01.mid", "sample_01.musicxml",
                     "sample_02.mid", "sample_02.musicxml"]  # fmt: skip
    results.update(steps=5, train_wall_s=12.5, params=model.num_parameters())
    report = recipe.write_results(results, tmp_path / "eval")
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["steps"] == 5
    assert (tmp_path / "eval" / "results.md").read_text() == report
    assert "| overall_score |" in report and "- step 5, training 12.5 s, " in report
    low, high = sorted(sets)
    assert f"over 2 sets of samples: mean {sum(sets) / 2:.1f}%, {low:.1f}-{high:.1f}%" in report
    assert results["samples_per_set"] == 3 and "; sets of 3 samples, 2 held-out" in report
    half = results["seconds_1000_tokens_float16"]
    assert (half is None) == ("with float16" not in report)


def test_evaluate_checkpoint_names_its_folder_and_leaves_the_runs_alone(tmp_path, monkeypatch):
    pytest.importorskip("music21")
    tok = MusicTokenizer()
    torch.manual_seed(3)
    model = recipe.music_gpt(tok, **TINY)
    _save_run(tmp_path / "a", tok, model, step=4)
    _save_run(tmp_path / "b", tok, recipe.music_gpt(tok, **TINY), step=9)
    # A save in progress (or one a crash left behind): a checkpoint manager would tidy it away.
    (tmp_path / "b" / "checkpoints" / "last.pt.tmp.123").write_bytes(b"partial")

    def run_files():
        files = (p for p in tmp_path.rglob("*") if p.is_file() and "eval_" not in str(p))
        return {p: p.read_bytes() for p in files}

    before = run_files()
    sampler = recipe.PieceSampler(model, tok, voices="mono", temperature=0.7, top_k=5)
    runs = [tmp_path / "a", tmp_path / "b"]
    results = recipe.evaluate_checkpoint(sampler, runs, "best", **_evaluation(tok))
    (folder,) = (tmp_path / "a").glob("eval_best_t0.7_k5_mono0_n60_ens2-*")
    assert json.loads((folder / "results.json").read_text()) == json.loads(json.dumps(results))
    assert results["steps"] == 4 and results["ensemble"] == [str(tmp_path / "b")]
    assert results["params"] == 2 * model.num_parameters()
    assert run_files() == before
    assert sampler.model is model  # the caller's sampler keeps its own model

    # At the default sample length the folder name says nothing of it (60 stands in for 1200).
    monkeypatch.setattr("transformer_kit.recipes.music._evaluation.SAMPLE_TOKENS", 60)
    alone = recipe.evaluate_checkpoint(sampler, runs[:1], "last", **_evaluation(tok))
    assert (tmp_path / "a" / "eval_last_t0.7_k5_mono0").is_dir()
    assert alone["ensemble"] == [] and alone["params"] == model.num_parameters()
    # A run with itself is the same distribution (a product of two equal experts), so the same
    # seeds draw the same samples.
    twice = recipe.evaluate_checkpoint(sampler, [runs[0], runs[0]], "last", **_evaluation(tok))
    assert twice["samples"] == pytest.approx(alone["samples"])
    assert twice["percent_of_bach_sets"] == pytest.approx(alone["percent_of_bach_sets"])
    assert run_files() == before
    with pytest.raises(ValueError, match="run_dirs must name at least one run"):
        recipe.evaluate_checkpoint(sampler, [], "best", **_evaluation(tok))


@pytest.mark.slow
def test_docs_example_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("music21")
    from transformer_kit.data import write_midi

    (tmp_path / "my_midi").mkdir()
    for i in range(20):
        write_midi(_chorale(i, bars=4), tmp_path / "my_midi" / f"piece_{i:02d}.mid")
    page = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"
    code = re.search(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)
    assert code is not None
    monkeypatch.chdir(tmp_path)
    exec(compile(code.group(1), str(page), "exec"), {})
    assert "% of the held-out pieces' score" in capsys.readouterr().out
    assert (tmp_path / "runs" / "mine" / "samples" / "sample_00.mid").is_file()

"""Tests for transformer_kit.augment: transforms, stage selection, row choice and exact resume."""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_kit.augment import (
    Compose,
    PitchShift,
    RandomCrop,
    RandomTokenMask,
    RhythmScale,
    Stage,
    StagedAugmentation,
    three_stage,
)
from transformer_kit.tokenization import MusicTokenizer, NoteEvent

VOCAB, PAD, MASK = 50, 0, 1


def _batch(rows: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Language-modelling batch of ids in [2, VOCAB): never PAD nor MASK."""
    ids = torch.randint(2, VOCAB, (rows, length + 1), generator=torch.Generator().manual_seed(seed))
    return ids[:, :-1].clone(), ids[:, 1:].clone()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _staged(seed: int = 0) -> StagedAugmentation:
    return three_stage(
        RandomTokenMask(0.2, mask_id=MASK),
        Compose([RandomCrop(2), RandomTokenMask(0.4, mask_id=MASK, protected_ids=(PAD,))]),
        seed=seed,
    )


# ---- transforms --------------------------------------------------------------------------------

TRANSFORMS = {
    "mask": RandomTokenMask(0.5, mask_id=MASK, protected_ids=(PAD,)),
    "crop": RandomCrop(3, target_pad_id=-100),
    "compose": Compose([RandomCrop(3), RandomTokenMask(0.5, mask_id=MASK)]),
    "empty_compose": Compose([]),
    "pitch_shift": PitchShift((-2, -1, 1, 2), note_ids=range(10, 40)),
    "rhythm_scale": RhythmScale((0.5, 2.0), durations={2: 0.5, 3: 1.0}, times={4: 0.5, 5: 1.0}),
}


@pytest.mark.parametrize("name", TRANSFORMS)
def test_transforms_never_mutate_nor_alias_inputs(name):
    inputs, targets = _batch(8, 16)
    before = (inputs.clone(), targets.clone())
    out_inputs, out_targets = TRANSFORMS[name](inputs, targets, generator=_gen(0))
    assert torch.equal(inputs, before[0]) and torch.equal(targets, before[1])
    assert out_inputs.shape == inputs.shape and out_targets.shape == targets.shape
    assert out_inputs.data_ptr() != inputs.data_ptr()
    assert out_targets.data_ptr() != targets.data_ptr()


def test_staged_augmentation_never_mutates_inputs():
    inputs, targets = _batch(8, 16)
    before = (inputs.clone(), targets.clone())
    aug = _staged()
    for epoch in (0, 15, 40):
        out_inputs, _ = aug(inputs, targets, epoch=epoch)
        assert out_inputs.data_ptr() != inputs.data_ptr()
    assert torch.equal(inputs, before[0]) and torch.equal(targets, before[1])


def test_token_mask_fraction_matches_p():
    inputs, targets = _batch(64, 256)  # 16384 tokens: std of the fraction is about 0.0036
    out, _ = RandomTokenMask(0.3, mask_id=MASK)(inputs, targets, generator=_gen(1))
    assert abs((out == MASK).float().mean().item() - 0.3) < 0.02


def test_token_mask_spares_protected_ids_and_targets():
    inputs, targets = _batch(4, 32)
    inputs[:, ::3] = PAD
    out, out_targets = RandomTokenMask(1.0, mask_id=MASK, protected_ids=[PAD])(
        inputs, targets, generator=_gen(0)
    )
    assert torch.equal(out == PAD, inputs == PAD)
    assert bool((out[inputs != PAD] == MASK).all())
    assert torch.equal(out_targets, targets)


@given(seed=st.integers(0, 2**31), p=st.floats(0.0, 1.0), rows=st.integers(1, 6))
def test_token_mask_only_writes_mask_id_off_protected_positions(seed, p, rows):
    inputs, targets = _batch(rows, 12, seed)
    inputs[:, 0] = PAD
    out, out_targets = RandomTokenMask(p, mask_id=MASK, protected_ids=(PAD,))(
        inputs, targets, generator=_gen(seed)
    )
    changed = out != inputs
    assert bool((out[changed] == MASK).all())
    assert torch.equal(out[:, 0], inputs[:, 0])
    assert torch.equal(out_targets, targets)
    if p == 0.0:
        assert not bool(changed.any())


@given(
    seed=st.integers(0, 2**31),
    rows=st.integers(1, 8),
    length=st.integers(1, 16),
    min_length=st.integers(1, 16),
)
def test_crop_pads_inputs_and_targets_consistently(seed, rows, length, min_length):
    min_length = min(min_length, length)
    inputs, targets = _batch(rows, length, seed)
    out, out_targets = RandomCrop(min_length, pad_id=PAD, target_pad_id=-100)(
        inputs, targets, generator=_gen(seed)
    )
    for row in range(rows):
        kept = int((out[row] != PAD).sum())
        assert min_length <= kept <= length
        assert torch.equal(out[row, :kept], inputs[row, :kept])
        assert torch.equal(out_targets[row, :kept], targets[row, :kept])
        assert bool((out[row, kept:] == PAD).all())
        assert bool((out_targets[row, kept:] == -100).all())


def test_crop_lengths_cover_the_whole_range():
    inputs, targets = _batch(400, 6)
    out, out_targets = RandomCrop(3)(inputs, targets, generator=_gen(0))
    lengths = (out != PAD).sum(dim=1)
    assert set(lengths.tolist()) == {3, 4, 5, 6}
    assert torch.equal(out_targets == PAD, out == PAD)  # target_pad_id defaults to pad_id


def test_crop_refuses_rows_shorter_than_min_length():
    inputs, targets = _batch(2, 4)
    with pytest.raises(ValueError, match="T=4 is shorter than min_length=5"):
        RandomCrop(5)(inputs, targets, generator=_gen(0))


def test_compose_applies_in_order_with_one_generator():
    crop, mask = RandomCrop(2), RandomTokenMask(0.5, mask_id=MASK)
    inputs, targets = _batch(6, 10)
    got = Compose([crop, mask])(inputs, targets, generator=_gen(3))
    generator = _gen(3)
    want = mask(*crop(inputs, targets, generator=generator), generator=generator)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: RandomTokenMask(1.5, mask_id=1), ValueError, "p must be a number in"),
        (lambda: RandomTokenMask(float("nan"), mask_id=1), ValueError, r"got nan"),
        (lambda: RandomTokenMask(0.1, mask_id=-1), ValueError, "mask_id must be an int >= 0"),
        (lambda: RandomCrop(0), ValueError, "min_length must be an int >= 1, got 0"),
        (lambda: RandomCrop(2, target_pad_id=1.0), ValueError, "target_pad_id must be an int"),
        (lambda: Compose([3]), TypeError, "transforms must be callables"),
        (lambda: Compose(5), TypeError, "transforms must be a sequence of callables, got 5"),
        (
            lambda: RandomTokenMask(0.1, mask_id=1, protected_ids=5),
            TypeError,
            "protected_ids must be a sequence of token ids, got 5",
        ),
        (lambda: Stage(-1, None, 0.0), ValueError, "start_epoch must be an int >= 0, got -1"),
        (lambda: Stage(0, None, 2.0), ValueError, "p must be a number in"),
        (lambda: StagedAugmentation([]), ValueError, "stages must be non-empty"),
        (
            lambda: StagedAugmentation([Stage(1, None, 0.0)]),
            ValueError,
            r"first stage must start at epoch 0, got start epochs \[1\]",
        ),
        (
            lambda: StagedAugmentation([Stage(0, None, 0.0), Stage(0, None, 0.0)]),
            ValueError,
            r"strictly increasing, got \[0, 0\]",
        ),
        (
            lambda: StagedAugmentation([Stage(0, None, 0.0), Stage(5, None, 0), Stage(3, None, 0)]),
            ValueError,
            r"strictly increasing, got \[0, 5, 3\]",
        ),
        (lambda: three_stage(Compose([]), Compose([]), light_from=0), ValueError, "light_from"),
        (
            lambda: PitchShift((), note_ids=range(5, 10)),
            ValueError,
            r"semitones must be a non-empty sequence of ints, got \(\)",
        ),
        (lambda: PitchShift((0.5,), note_ids=range(5, 10)), ValueError, "semitones must be"),
        (
            lambda: PitchShift((1,), note_ids=range(10, 5)),
            ValueError,
            r"note_ids must be a non-empty range .* got range\(10, 5\)",
        ),
        (lambda: PitchShift((1,), note_ids=[5, 6]), ValueError, "note_ids must be"),
        (
            lambda: RhythmScale((0.0,), durations={1: 1.0}, times={2: 1.0}),
            ValueError,
            r"factors must be a non-empty sequence of numbers > 0, got \(0.0,\)",
        ),
        (
            lambda: RhythmScale((2.0,), durations={}, times={2: 1.0}),
            ValueError,
            r"durations must be a non-empty mapping of ids >= 0 to numbers >= 0, got \{\}",
        ),
        (
            lambda: RhythmScale((2.0,), durations={1: 1.0}, times={2: -1.0}),
            ValueError,
            "times must be a non-empty mapping",
        ),
        (
            lambda: RhythmScale((2.0,), durations={1: 1.0}, times={1: 1.0}),
            ValueError,
            r"both a DUR and a TIME id, got \[1\]",
        ),
        (
            lambda: three_stage(Compose([]), Compose([]), light_from=5, heavy_from=5),
            ValueError,
            r"heavy_from must be an int > light_from \(5\), got 5",
        ),
    ],
)
def test_validation_names_parameter(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_batches_are_validated():
    mask = RandomTokenMask(0.1, mask_id=MASK)
    inputs, targets = _batch(2, 4)
    with pytest.raises(ValueError, match="inputs must be a 2-D integer tensor"):
        mask(inputs.float(), targets, generator=_gen(0))
    with pytest.raises(ValueError, match="same shape"):
        mask(inputs, targets[:, :3], generator=_gen(0))
    with pytest.raises(ValueError, match="epoch must be an int >= 0, got -1"):
        _staged()(inputs, targets, epoch=-1)


# ---- StagedAugmentation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "epoch, stage_index", [(0, 0), (9, 0), (10, 1), (29, 1), (30, 2), (100, 2)]
)
def test_stage_selection_at_boundaries(epoch, stage_index):
    light, heavy = RandomTokenMask(0.1, mask_id=MASK), RandomCrop(2)
    aug = three_stage(light, heavy)
    stage = aug.stage_at(epoch)
    assert stage is aug.stages[stage_index]
    assert (stage.transform, stage.p) == [(None, 0.0), (light, 0.5), (heavy, 0.8)][stage_index]


@pytest.mark.parametrize("p", [0.3, 0.8])
def test_rows_follow_the_documented_draws_and_others_are_unchanged(p):
    aug = StagedAugmentation([Stage(0, RandomTokenMask(1.0, mask_id=MASK), p)], seed=11)
    inputs, targets = _batch(32, 8)
    out, out_targets = aug(inputs, targets, epoch=0)
    want_chosen = torch.rand(32, generator=_gen(11)) < p  # one uniform draw per row
    for row in range(32):
        if want_chosen[row]:
            assert bool((out[row] == MASK).all())
        else:
            assert torch.equal(out[row], inputs[row])
    assert torch.equal(out_targets, targets)


def test_per_row_application_frequency_matches_p():
    aug = StagedAugmentation([Stage(0, RandomTokenMask(1.0, mask_id=MASK), 0.8)], seed=5)
    inputs, targets = _batch(2000, 4)  # std of the fraction is about 0.009
    out, _ = aug(inputs, targets, epoch=0)
    assert abs((out[:, 0] == MASK).float().mean().item() - 0.8) < 0.04


@pytest.mark.parametrize("stage", [Stage(0, None, 0.5), Stage(0, RandomCrop(1), 0.0)])
def test_inactive_stage_returns_the_batch_and_draws_nothing(stage):
    aug = StagedAugmentation([stage], seed=4)
    before = aug.state_dict()["generator"].clone()
    inputs, targets = _batch(4, 8)
    out, out_targets = aug(inputs, targets, epoch=3)
    assert torch.equal(out, inputs) and torch.equal(out_targets, targets)
    assert torch.equal(aug.state_dict()["generator"], before)
    assert aug.calls == 1


def test_inactive_epochs_do_not_shift_the_random_stream():
    inputs, targets = _batch(16, 8)
    skipping, direct = _staged(seed=9), _staged(seed=9)
    for epoch in range(10):
        skipping(inputs, targets, epoch=epoch)
    assert torch.equal(skipping(inputs, targets, epoch=10)[0], direct(inputs, targets, epoch=10)[0])


def _run(aug: StagedAugmentation, epochs: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [aug(*_batch(8, 12, seed=i), epoch=epoch) for i, epoch in enumerate(epochs)]


def _same(a, b) -> bool:
    if len(a) != len(b):
        return False
    return all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True)
    )


EPOCHS = [10, 11, 12, 20, 29, 30, 31, 35, 40, 41]  # every call draws randomness


def test_same_seed_is_deterministic_and_other_seeds_differ():
    assert _same(_run(_staged(seed=3), EPOCHS), _run(_staged(seed=3), EPOCHS))
    assert not _same(_run(_staged(seed=3), EPOCHS), _run(_staged(seed=4), EPOCHS))


@settings(max_examples=20)
@given(split=st.integers(1, len(EPOCHS) - 1), seed=st.integers(0, 1000))
def test_resume_matches_an_uninterrupted_run(split, seed):
    want = _run(_staged(seed), EPOCHS)

    first = _staged(seed)
    got = _run(first, EPOCHS[:split])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    resumed = _staged(seed=seed + 1)  # the saved seed wins over the constructor's
    resumed.load_state_dict(state)
    assert _same(got + _resume_rest(resumed, split), want)
    assert resumed.calls == len(EPOCHS)
    assert resumed.seed == seed

    control = _resume_rest(_staged(seed), split)  # same seed, fresh stream: must differ
    assert not _same(control, want[split:])


def _resume_rest(aug: StagedAugmentation, split: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [aug(*_batch(8, 12, seed=i), epoch=EPOCHS[i]) for i in range(split, len(EPOCHS))]


def test_transform_changing_the_shape_is_refused():
    def shrink(inputs, targets, *, generator):
        return inputs[:, :-1], targets[:, :-1]

    aug = StagedAugmentation([Stage(0, shrink, 1.0)])
    with pytest.raises(ValueError, match="must keep the batch shape"):
        aug(*_batch(2, 4), epoch=0)


# ---- music: PitchShift and RhythmScale -----------------------------------------------------------

TOK = MusicTokenizer()
NOTES = TOK.note_ids
SEED_SCHEDULE = {  # the seed document's schedule: none, then +-1 on half the rows, then +-2
    "light": PitchShift((-1, 0, 1), note_ids=NOTES),
    "heavy": PitchShift(range(-2, 3), note_ids=NOTES),
}


def _music_batch(rows: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of random ids over the music vocabulary, NOTE ids on about half the positions."""
    g = _gen(seed)
    ids = torch.randint(len(TOK.vocab), (rows, length + 1), generator=g)
    notes = torch.randint(NOTES.start, NOTES.stop, (rows, length + 1), generator=g)
    ids = torch.where(torch.rand(rows, length + 1, generator=g) < 0.5, notes, ids)
    return ids[:, :-1].clone(), ids[:, 1:].clone()


@given(
    seed=st.integers(0, 2**31),
    rows=st.integers(1, 8),
    semitones=st.lists(st.integers(-30, 30), min_size=1, max_size=5),
)
def test_pitch_shift_moves_every_note_of_a_row_by_one_drawn_k(seed, rows, semitones):
    ids = _music_batch(rows, 20, seed)
    inputs, targets = ids
    shift = PitchShift(semitones, note_ids=NOTES)
    out, out_targets = shift(inputs, targets, generator=_gen(seed))
    assert torch.equal(out[:, 1:], out_targets[:, :-1])  # targets stay the inputs one step on
    for row in range(rows):
        sequence = torch.cat([inputs[row], targets[row, -1:]])
        moved = torch.cat([out[row], out_targets[row, -1:]])
        is_note = (sequence >= NOTES.start) & (sequence < NOTES.stop)
        assert torch.equal(moved[~is_note], sequence[~is_note])  # non-NOTE tokens untouched
        if not is_note.any():
            continue
        ks = set((moved[is_note] - sequence[is_note]).tolist())
        assert len(ks) == 1  # one k per row
        k = ks.pop()
        assert bool(((moved[is_note] >= NOTES.start) & (moved[is_note] < NOTES.stop)).all())
        notes = sequence[is_note]
        misfits = [j for j in semitones if not (NOTES.start <= notes.min() + j and
                                                notes.max() + j < NOTES.stop)]  # fmt: skip
        assert k in semitones or (k == 0 and misfits)  # unchanged only when the draw misfits


def test_pitch_shift_leaves_rows_that_would_leave_the_range_unchanged():
    top, bottom = NOTES[-1], NOTES[0]
    inputs = torch.tensor([[TOK.start_id, bottom, TOK.voice_ids[0]], [TOK.start_id, top, 60]])
    targets = torch.tensor([[bottom, TOK.voice_ids[0], bottom + 3], [top, 60, 61]])
    for seed in range(5):
        out, out_targets = PitchShift((1,), note_ids=NOTES)(inputs, targets, generator=_gen(seed))
        assert out.tolist() == [[TOK.start_id, bottom + 1, TOK.voice_ids[0]], inputs[1].tolist()]
        assert out_targets.tolist() == [
            [bottom + 1, TOK.voice_ids[0], bottom + 4], targets[1].tolist()
        ]  # fmt: skip
    # The top note is only in the targets: the row still stays whole.
    inputs, targets = torch.tensor([[TOK.start_id, 60]]), torch.tensor([[60, top]])
    out, out_targets = PitchShift((1,), note_ids=NOTES)(inputs, targets, generator=_gen(0))
    assert torch.equal(out, inputs) and torch.equal(out_targets, targets)


def test_pitch_shift_draws_every_shift_and_is_deterministic_under_a_seed():
    inputs, targets = torch.full((400, 2), NOTES[25]), torch.full((400, 2), NOTES[25])
    shift = SEED_SCHEDULE["heavy"]
    out, _ = shift(inputs, targets, generator=_gen(7))
    assert set((out[:, 0] - inputs[:, 0]).tolist()) == {-2, -1, 0, 1, 2}
    again, _ = shift(inputs, targets, generator=_gen(7))
    other, _ = shift(inputs, targets, generator=_gen(8))
    assert torch.equal(out, again) and not torch.equal(out, other)


KEYED = MusicTokenizer(key_tokens=True)  # TOK's ids, then <KEY:-6>..<KEY:5>
KEY_SHIFT = {"note_ids": KEYED.note_ids, "key_ids": KEYED.key_ids}


def _shift_stream(ids: list[int], semitones: int, seed: int = 0) -> list[int]:
    """One token stream through PitchShift((semitones,)) as an (inputs, targets) pair."""
    row = torch.tensor([ids])
    out, out_targets = PitchShift((semitones,), **KEY_SHIFT)(
        row[:, :-1], row[:, 1:], generator=_gen(seed)
    )
    assert torch.equal(out[:, 1:], out_targets[:, :-1])
    return torch.cat([out[0], out_targets[0, -1:]]).tolist()


@pytest.mark.parametrize(
    "key, semitones, shifted",
    [(0, 1, -5), (1, -2, -1), (3, 5, 2), (0, 0, 0), (-6, 1, 1), (5, -1, -2), (-1, 12, -1),
     (2, 7, 3)],
)  # fmt: skip
def test_pitch_shift_transposes_the_key_token_by_hand(key, semitones, shifted):
    # C up 1 = Db (5 flats); G down 2 = F; A up 5 = D; Gb up 1 = G; B down 1 = Bb; D up 7 = A.
    ids = KEYED.encode([NoteEvent(60, 1, 0.0, 1.0, key=key)])
    out = _shift_stream(ids, semitones)
    assert out[1] == KEYED.key_id(shifted)
    assert out[2] == ids[2] + semitones and out[:1] + out[3:] == ids[:1] + ids[3:]


def test_pitch_shift_keeps_the_key_of_a_row_it_leaves_unchanged():
    ids = KEYED.encode([NoteEvent(KEYED.max_pitch, 1, 0.0, 1.0, key=2)])
    assert _shift_stream(ids, 1) == ids  # the note would leave the range: nothing moves
    assert _shift_stream(ids, -1)[1] == KEYED.key_id(2 - 7)
    plain = PitchShift((1,), note_ids=KEYED.note_ids)  # without key_ids the key stays put
    row = torch.tensor([KEYED.encode([NoteEvent(60, 1, 0.0, 1.0, key=2)])])
    assert plain(row[:, :-1], row[:, 1:], generator=_gen(0))[0][0, 1] == KEYED.key_id(2)


def _shift_events(events: list[NoteEvent], semitones: int) -> list[NoteEvent]:
    """Transposed events: every pitch by `semitones`, every key by 7 sharps a semitone."""
    return [
        NoteEvent(e.pitch + semitones, e.voice, e.onset, e.duration, e.bar,
                  (e.key + 7 * semitones + 6) % 12 - 6)
        for e in events
    ]  # fmt: skip


TRANSPOSABLE = st.lists(  # pitches 6 semitones inside KEYED's range, so any |s| <= 6 fits
    st.builds(
        NoteEvent, pitch=st.integers(40, 77), voice=st.integers(1, 4),
        onset=st.integers(0, 16).map(lambda k: k * 0.5), duration=st.sampled_from([0.5, 1.0, 2.0]),
        key=st.integers(-7, 7),
    ),
    min_size=1, max_size=8,
)  # fmt: skip


@given(events=TRANSPOSABLE, semitones=st.integers(-6, 6))
def test_pitch_shift_of_a_stream_is_the_stream_of_the_shifted_events(events, semitones):
    ids = KEYED.encode(events)
    shifted = _shift_stream(ids, semitones)
    assert shifted == KEYED.encode(_shift_events(events, semitones))
    assert _shift_stream(shifted, -semitones) == ids  # and back again


def test_pitch_shift_refuses_bad_key_ids():
    with pytest.raises(ValueError, match="key_ids must be an empty range or a range of 12"):
        PitchShift((1,), note_ids=NOTES, key_ids=range(93, 100))
    with pytest.raises(ValueError, match="key_ids must be an empty range or a range of 12"):
        PitchShift((1,), note_ids=NOTES, key_ids=[93, 94])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must not overlap note_ids"):
        PitchShift((1,), note_ids=NOTES, key_ids=range(50, 62))


def _music_calls(aug: StagedAugmentation, indices: range) -> list[tuple[torch.Tensor, ...]]:
    return [aug(*_music_batch(8, 16, seed=i), epoch=EPOCHS[i]) for i in indices]


@settings(max_examples=10)
@given(split=st.integers(1, len(EPOCHS) - 1), seed=st.integers(0, 1000))
def test_staged_pitch_shift_resumes_exactly(split, seed):
    def staged(s: int) -> StagedAugmentation:
        return three_stage(SEED_SCHEDULE["light"], SEED_SCHEDULE["heavy"], seed=s)

    everything, head, tail = range(len(EPOCHS)), range(split), range(split, len(EPOCHS))
    want = _music_calls(staged(seed), everything)
    assert any(not torch.equal(w[0], _music_batch(8, 16, i)[0]) for i, w in enumerate(want))
    first = staged(seed)
    got = _music_calls(first, head)
    resumed = staged(seed + 1)  # the saved seed wins
    resumed.load_state_dict(first.state_dict())
    assert _same(got + _music_calls(resumed, tail), want)
    assert not _same(_music_calls(staged(seed), tail), want[split:])


DUR_VALUES = dict(zip(TOK.dur_ids, TOK.durations, strict=True))
TIME_VALUES = dict(zip(TOK.time_ids, TOK.time_steps, strict=True))


def _scaled_row(row: list[int], factor: float) -> list[int]:
    """Reference: a row with every DUR and TIME value times `factor`, or the row if one is off."""
    out = []
    for i in row:
        for group in (DUR_VALUES, TIME_VALUES):
            if i in group:
                match = [j for j, v in group.items() if v == group[i] * factor]
                if not match:
                    return row
                i = match[0]
        out.append(i)
    return out


@given(
    seed=st.integers(0, 2**31),
    factor=st.sampled_from([0.5, 2.0, 1.5, 3.0]),
    pieces=st.lists(
        st.lists(
            st.builds(
                NoteEvent,
                pitch=st.integers(40, 80),
                voice=st.integers(1, 4),
                onset=st.integers(0, 64).map(lambda k: k * 0.25),
                duration=st.sampled_from([0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 8.0]),
                bar=st.integers(0, 8),
            ),
            max_size=8,
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_rhythm_scale_scales_every_value_of_a_row_exactly_or_none(seed, factor, pieces):
    length = 24
    rows = [(TOK.encode(p) + [TOK.pad_id] * length)[: length + 1] for p in pieces]
    ids = torch.tensor(rows)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    scale = RhythmScale.for_tokenizer(TOK, factors=(factor,))
    out, out_targets = scale(inputs, targets, generator=_gen(seed))
    assert torch.equal(out[:, 1:], out_targets[:, :-1])
    value = {**DUR_VALUES, **TIME_VALUES}
    for row, original in zip(torch.cat([out, out_targets[:, -1:]], 1).tolist(), rows, strict=True):
        assert row == _scaled_row(original, factor)
        drawn = 1.0 if row == original else factor
        for old, new in zip(original, row, strict=True):
            if old in value:  # DUR stays DUR and TIME stays TIME, each value times the factor
                assert TOK.vocab.group_of(new) == TOK.vocab.group_of(old)
                assert value[new] == value[old] * drawn
            else:
                assert new == old  # NOTE, VOICE, BAR, REST and the specials stay


def test_rhythm_scale_halves_and_doubles_a_phrase_and_keeps_off_grid_rows():
    phrase = [NoteEvent(60, 1, 0.0, 1.0), NoteEvent(62, 1, 1.0, 0.5), NoteEvent(64, 1, 1.5, 2.0)]
    ids = torch.tensor([TOK.encode(phrase)])
    for factor in (0.5, 2.0):
        scale = RhythmScale.for_tokenizer(TOK, factors=(factor,))
        out, _ = scale(ids[:, :-1], ids[:, 1:], generator=_gen(0))
        scaled = [
            NoteEvent(e.pitch, e.voice, e.onset * factor, e.duration * factor) for e in phrase
        ]
        assert TOK.decode(out[0].tolist() + [TOK.end_id]) == scaled
    long = torch.tensor([TOK.encode([NoteEvent(60, 1, 0.0, 16.0)])])  # 32 quarter notes: no token
    out, out_targets = RhythmScale.for_tokenizer(TOK, factors=(2.0,))(
        long[:, :-1], long[:, 1:], generator=_gen(0)
    )
    assert torch.equal(out, long[:, :-1]) and torch.equal(out_targets, long[:, 1:])


def test_rhythm_scale_for_tokenizer_maps_each_group_onto_itself():
    scale = RhythmScale.for_tokenizer(TOK)
    assert scale.factors == (0.5, 2.0)
    assert scale.durations == DUR_VALUES and scale.times == TIME_VALUES
    # -100 (ignored targets) and ids beyond the table pass through.
    inputs = torch.tensor([[TOK.dur_ids[5], 500]])
    targets = torch.tensor([[500, -100]])
    out, out_targets = scale(inputs, targets, generator=_gen(0))
    assert out[0, 1] == 500 and out_targets.tolist() == [[500, -100]]
    assert TOK.durations[int(out[0, 0]) - TOK.dur_ids.start] in (0.5, 2.0)


@pytest.mark.parametrize("module", ["", "._music", "._schedule", "._tokens"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    import transformer_kit.augment as augment

    names = {name: getattr(augment, name) for name in augment.__all__}
    target = importlib.import_module(f"transformer_kit.augment{module}")
    result = doctest.testmod(target, extraglobs={**names, "torch": torch})
    assert result.attempted > 0 and result.failed == 0

"""Trainer: exact resume, accumulation equivalence, non-finite steps, rollback, DDP, policies."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from transformer_kit import schedules
from transformer_kit.checkpoint import CheckpointError, CheckpointManager
from transformer_kit.data import TokenDataset
from transformer_kit.early_stopping import EarlyStopping
from transformer_kit.logging import JSONLLogger, read_metrics
from transformer_kit.models import GPT, GPTConfig
from transformer_kit.trainer import RESUME_FIXED, Trainer, TrainerConfig, TrainingError
from transformer_kit.trainer._monitor import peak_flops

HERE = Path(__file__).parent
CHILD = HERE / "_train_child.py"
sys.path.insert(0, str(HERE))
from _train_child import corpus  # noqa: E402


def make_trainer(tmp_path: Path | None = None, *, trainer_cls=Trainer, **overrides) -> Trainer:
    """A tiny GPT on the child's corpus; keys of TrainerConfig go to the config, the rest
    (parts such as loggers, or a subclass's own keywords) to the trainer's constructor."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=24, block_size=16, n_layer=2, n_head=2, d_model=32))
    settings = dict(
        max_steps=6, batch_size=4, lr=3e-3, warmup_steps=2, eval_every=3, eval_batches=2, seed=3
    )
    fields = set(TrainerConfig.__dataclass_fields__)
    settings.update({k: v for k, v in overrides.items() if k in fields})
    kwargs = {k: v for k, v in overrides.items() if k not in fields}
    if tmp_path is not None:
        kwargs.setdefault("checkpoints", CheckpointManager(tmp_path / "checkpoints"))
    data = corpus()
    return trainer_cls(
        model,
        TrainerConfig(**settings),
        TokenDataset(data[:3500], 16),
        TokenDataset(data[3500:], 16),
        **kwargs,
    )


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fit_lowers_loss_and_writes_best_and_last(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=30, eval_every=10)
    first = trainer.evaluate()["val_loss"]
    final = trainer.fit()
    assert final["val_loss"] < first - 0.5
    assert math.isclose(final["val_ppl"], math.exp(final["val_loss"]), rel_tol=1e-9)
    assert (tmp_path / "checkpoints" / "last.pt").exists()
    assert (tmp_path / "checkpoints" / "best.pt").exists()
    assert trainer.checkpoints.load("last")["step"] == 30


def test_logged_lr_follows_warmup_cosine(tmp_path):
    path = tmp_path / "m.jsonl"
    trainer = make_trainer(
        max_steps=8, warmup_steps=3, min_lr_ratio=0.1, loggers=[JSONLLogger(path)]
    )
    trainer.fit()
    records = [r for r in read_metrics(path) if "lr" in r]
    for record in records:
        step = record["step"] - 1  # the lr used by optimizer step n is the schedule at n - 1
        expected = 3e-3 * schedules.warmup_cosine(
            step, warmup_steps=3, total_steps=8, min_ratio=0.1
        )
        assert record["lr"] == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert [r["step"] for r in records] == list(range(1, 9))


def test_weight_decay_only_on_matrices():
    trainer = make_trainer()
    decay, no_decay = trainer.optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"])
    embeddings = {
        id(m.weight) for m in trainer.model.modules() if isinstance(m, torch.nn.Embedding)
    }
    assert not embeddings & {id(p) for p in decay["params"]}
    assert all(p.dim() == 1 or id(p) in embeddings for p in no_decay["params"])
    n_opt = sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"])
    assert n_opt == trainer.model.num_parameters()


@pytest.mark.parametrize("optimizer", ["adamw", "muon", "adafactor"])
def test_resume_in_process_matches_uninterrupted_run(tmp_path, optimizer):
    straight = make_trainer(tmp_path / "a", max_steps=6, checkpoint_every=3, optimizer=optimizer)
    straight.fit()

    class StopAt3:
        def on_step_end(self, trainer, metrics):
            return trainer.step == 3

    first = make_trainer(
        tmp_path / "b", max_steps=6, checkpoint_every=3, callbacks=[StopAt3()], optimizer=optimizer
    )
    first.fit()
    assert first.step == 3
    state_at_3 = first.checkpoints.load("last")
    second = make_trainer(tmp_path / "b", max_steps=6, checkpoint_every=3, optimizer=optimizer)
    assert second.resume() and second.step == 3
    second.fit()
    for key, value in weights(straight.model).items():
        assert torch.equal(value, second.model.state_dict()[key]), key
    # Control: the same resume with a fresh optimizer state ends elsewhere.
    third = make_trainer(max_steps=6, optimizer=optimizer)
    third.load_state_dict(state_at_3)
    third.optimizer = third.configure_optimizer()
    third.scheduler = third.configure_scheduler(third.optimizer)
    third.scheduler.load_state_dict(state_at_3["scheduler"])
    third.fit()
    assert third.step == 6
    assert any(
        not torch.equal(v, third.model.state_dict()[k]) for k, v in weights(straight.model).items()
    )


class FixedBatches(Trainer):
    """Feeds micro-batches from a list: the accumulation test controls exactly what is seen."""

    def __init__(self, *args, batches, **kwargs):
        super().__init__(*args, **kwargs)
        self._fixed = iter(batches)

    def next_batch(self):
        return next(self._fixed)

    def configure_optimizer(self):
        # Plain SGD: its update is proportional to the gradient. Adam's first step is about
        # lr * sign(g), which turns float noise in near-zero gradients into visible differences.
        return torch.optim.SGD(self.model.parameters(), lr=0.5)


def test_gradient_accumulation_equals_one_large_batch():
    g = torch.Generator().manual_seed(0)
    inputs = torch.randint(4, 24, (8, 16), generator=g)
    targets = torch.randint(4, 24, (8, 16), generator=g)
    targets[:3, 10:] = 0  # padding: micro-batches then hold different numbers of real tokens
    # warmup_steps=0: with warmup, step 0's multiplier is 0 and nothing would move.
    big = make_trainer(
        trainer_cls=FixedBatches,
        max_steps=1,
        warmup_steps=0,
        batch_size=8,
        batches=[(inputs, targets)],
    )
    small = make_trainer(
        trainer_cls=FixedBatches,
        max_steps=1,
        warmup_steps=0,
        batch_size=4,
        grad_accum_steps=2,
        batches=[(inputs[:4], targets[:4]), (inputs[4:], targets[4:])],
    )
    before = weights(big.model)
    big.fit()
    small.fit()
    moved = 0
    for key, value in big.model.state_dict().items():
        torch.testing.assert_close(small.model.state_dict()[key], value, rtol=1e-5, atol=1e-6)
        moved += int(not torch.equal(value, before[key]))
    assert moved > 0


class NanAt(Trainer):
    def __init__(self, *args, nan_steps, **kwargs):
        super().__init__(*args, **kwargs)
        self.nan_steps = set(nan_steps)

    def training_step(self, batch):
        loss = super().training_step(batch)
        return loss * float("nan") if self.step + 1 in self.nan_steps else loss


def test_non_finite_step_is_skipped_and_counted(tmp_path):
    path = tmp_path / "m.jsonl"
    trainer = make_trainer(
        trainer_cls=NanAt, nan_steps={3}, max_steps=4, eval_every=100, loggers=[JSONLLogger(path)]
    )
    snapshots = []

    class Snap:
        def on_step_end(self, trainer, metrics):
            snapshots.append(weights(trainer.model))

    trainer.callbacks.append(Snap())
    trainer.fit()
    for key in snapshots[1]:
        assert torch.equal(snapshots[1][key], snapshots[2][key])  # step 3 changed nothing
    assert any(not torch.equal(snapshots[2][k], snapshots[3][k]) for k in snapshots[2])  # 4 did
    records = [r for r in read_metrics(path) if "bad_steps" in r]
    assert [r["bad_steps"] for r in records] == [0.0, 0.0, 1.0, 1.0]
    assert trainer.bad_steps == 1


def test_too_many_bad_steps_stop_with_the_step_named_and_checkpoints_untouched(tmp_path):
    trainer = make_trainer(
        tmp_path,
        trainer_cls=NanAt,
        nan_steps={5, 6, 7},
        max_steps=10,
        max_bad_steps=3,
        checkpoint_every=2,
        eval_every=100,
    )
    with pytest.raises(TrainingError, match="step 7"):
        trainer.fit()
    last = tmp_path / "checkpoints" / "last.pt"
    assert trainer.checkpoints.load("last")["step"] == 4
    assert last.exists()


def test_loggers_are_closed_when_the_run_fails(tmp_path):
    class Recorder:
        def __init__(self):
            self.closed = False
            self.steps = []

        def log(self, metrics, step):
            self.steps.append(step)

        def close(self):
            self.closed = True

    recorder = Recorder()
    trainer = make_trainer(
        trainer_cls=NanAt, nan_steps={2, 3}, max_steps=6, max_bad_steps=2, loggers=[recorder]
    )
    with pytest.raises(TrainingError):
        trainer.fit()
    assert recorder.closed and recorder.steps == [1, 2]


def test_spike_rolls_back_to_last_good_checkpoint(tmp_path):
    class SpikeAt(Trainer):
        def training_step(self, batch):
            loss = super().training_step(batch)
            return loss * 100 if self.step + 1 == 9 and self.rollbacks == 0 else loss

    trainer = make_trainer(
        tmp_path,
        trainer_cls=SpikeAt,
        max_steps=12,
        warmup_steps=2,
        spike_factor=5.0,
        checkpoint_every=4,
        eval_every=100,
    )
    steps_seen = []

    class Record:
        def on_step_end(self, trainer, metrics):
            steps_seen.append(trainer.step)

    trainer.callbacks.append(Record())
    trainer.fit()
    assert trainer.rollbacks == 1
    # After the spike at step 9 the run went back to step 8's checkpoint and carried on.
    assert steps_seen[:9] == list(range(1, 9)) + [8]
    assert trainer.step == 12


def test_early_stopping_ends_the_run(tmp_path):
    stopper = EarlyStopping(patience=1, monitor="val_loss", mode="max")  # loss falls: "worse"
    trainer = make_trainer(max_steps=50, eval_every=2, early_stopping=stopper)
    trainer.fit()
    assert trainer.step == 4


def test_restore_best_loads_the_best_weights_at_the_end(tmp_path):
    class WorseAfterStep2(Trainer):
        def evaluate(self):
            metrics = super().evaluate()
            metrics["val_loss"] += 10.0 * (self.step > 2)  # later evaluations look worse
            return metrics

    snapshots = {}

    class Snap:
        def on_step_end(self, trainer, metrics):
            snapshots[trainer.step] = weights(trainer.model)

    trainer = make_trainer(
        tmp_path, trainer_cls=WorseAfterStep2, max_steps=6, eval_every=2, restore_best=True,
        callbacks=[Snap()],
    )  # fmt: skip
    trainer.fit()
    assert trainer.checkpoints.best_step == 2
    assert any(not torch.equal(snapshots[2][k], snapshots[6][k]) for k in snapshots[2])
    for key, value in snapshots[2].items():
        assert torch.equal(trainer.model.state_dict()[key], value), key


def test_checkpoint_failure_policy(tmp_path):
    class FullDisk(CheckpointManager):
        def save(self, state, *, step, metrics=None):
            raise CheckpointError("simulated: no space left on device")

    failing = make_trainer(checkpoints=FullDisk(tmp_path / "a"), max_steps=4, checkpoint_every=2)
    with pytest.raises(CheckpointError, match="no space"):
        failing.fit()
    assert failing.step == 2
    going_on = make_trainer(
        checkpoints=FullDisk(tmp_path / "b"),
        max_steps=4,
        checkpoint_every=2,
        checkpoint_error="continue",
    )
    going_on.fit()
    assert going_on.step == 4


def test_callbacks_are_called_and_can_stop():
    events = []

    class Recorder:
        def on_train_start(self, trainer):
            events.append("start")

        def on_evaluate(self, trainer, metrics):
            events.append(("eval", trainer.step))

        def on_train_end(self, trainer, metrics):
            events.append("end")

        def on_step_end(self, trainer, metrics):
            return trainer.step == 5

    trainer = make_trainer(max_steps=20, eval_every=2, callbacks=[Recorder()])
    trainer.fit()
    assert trainer.step == 5
    assert events == ["start", ("eval", 2), ("eval", 4), ("eval", 5), "end"]


def test_bf16_autocast_on_cpu_trains():
    trainer = make_trainer(max_steps=3, precision="bf16", eval_every=3)
    assert math.isfinite(trainer.fit()["val_loss"])


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("max_steps", 0, "max_steps must be an integer >= 1, got 0"),
        ("precision", "fp8", "precision must be one of"),
        ("grad_clip", -1.0, r"grad_clip must be a finite number > 0, or None \(no clipping\)"),
        ("min_lr_ratio", 2.0, r"min_lr_ratio must be a number in \[0, 1\], got 2.0"),
        ("checkpoint_error", "ignore", "checkpoint_error must be one of"),
    ],
)
def test_config_errors_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainerConfig(**{field: value})


INF, NAN = float("inf"), float("nan")
DEVICES = "'auto' (CUDA when available, else CPU), 'cpu', 'cuda', 'cuda:N' (N = 0, 1, ...) or 'mps'"


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("lr", INF, "a finite number > 0"),
        ("lr", NAN, "a finite number > 0"),
        ("lr", True, "a finite number > 0"),
        ("lr", "1e-3", "a finite number > 0"),
        ("lr", 0, "a finite number > 0"),
        ("weight_decay", NAN, "a finite number >= 0"),
        ("weight_decay", INF, "a finite number >= 0"),
        ("weight_decay", False, "a finite number >= 0"),
        ("min_lr_ratio", True, "a number in [0, 1]"),
        ("min_lr_ratio", "0.1", "a number in [0, 1]"),
        ("betas", 0.9, "two numbers in [0, 1)"),
        ("betas", (0.9,), "two numbers in [0, 1)"),
        ("betas", (0.9, 0.95, 0.99), "two numbers in [0, 1)"),
        ("betas", (0.9, NAN), "two numbers in [0, 1)"),
        ("betas", (False, 0.95), "two numbers in [0, 1)"),
        ("betas", "ab", "two numbers in [0, 1)"),
        ("warmup_steps", True, "an integer >= 0"),
        ("warmup_steps", 1.0, "an integer >= 0"),
        ("max_rollbacks", False, "an integer >= 0"),
        ("max_steps", True, "an integer >= 1"),
        ("batch_size", 8.0, "an integer >= 1"),
        ("checkpoint_every", True, "an integer >= 1 or None"),
        ("checkpoint_every", 1.5, "an integer >= 1 or None"),
        ("checkpoint_every", 0, "an integer >= 1 or None"),
        ("seed", 1.5, "an integer in [-2**63, 2**64) (the range torch.manual_seed accepts)"),
        ("seed", "a", "an integer in [-2**63, 2**64)"),
        ("seed", 2**70, "an integer in [-2**63, 2**64)"),
        ("seed", 2**64, "an integer in [-2**63, 2**64)"),
        ("seed", -(2**63) - 1, "an integer in [-2**63, 2**64)"),
        ("seed", True, "an integer in [-2**63, 2**64)"),
        ("device", "gpu", DEVICES),
        ("device", "cuda:-1", DEVICES),
        ("device", "cuda:01", DEVICES),
        ("device", "CPU", DEVICES),
        ("device", "meta", DEVICES),
        ("device", None, DEVICES),
        ("compile", 1, "True or False"),
        ("compile", "yes", "True or False"),
        ("fsdp", 0, "True or False"),
        ("fsdp", np.bool_(True), "True or False"),
        ("restore_best", None, "True or False"),
        ("time_limit_s", INF, "a finite number of seconds > 0, or None (no limit)"),
        ("time_limit_s", True, "a finite number of seconds > 0, or None (no limit)"),
        ("time_limit_s", 0, "a finite number of seconds > 0, or None (no limit)"),
        ("grad_clip", INF, "a finite number > 0, or None (no clipping)"),
        ("grad_clip", True, "a finite number > 0, or None (no clipping)"),
        ("spike_factor", INF, "a finite number > 1, or None (no rollback)"),
        ("spike_factor", True, "a finite number > 1, or None (no rollback)"),
        ("ema_decay", NAN, "a number in (0, 1) or None"),
        ("optimizer", "sgd", "one of ('adamw', 'muon', 'adafactor')"),
        ("precision", None, "one of ('fp32', 'bf16', 'fp16')"),
        ("checkpoint_error", True, "one of ('raise', 'continue')"),
    ],
)
def test_config_refuses_a_bad_value_naming_field_value_and_rule(field, value, allowed):
    with pytest.raises(ValueError) as caught:
        TrainerConfig(**{field: value})
    message = str(caught.value)
    assert message.startswith(f"TrainerConfig.{field} must be {allowed}"), message
    # A value of the wrong type is shown with its type (a bool is not a number here).
    integers = {
        f.name for f in dataclasses.fields(TrainerConfig) if f.type in ("int", "int | None")
    }
    assert {"seed", "warmup_steps", "checkpoint_every", "max_steps"} <= integers
    right_type = {
        "betas": lambda v: isinstance(v, tuple | list),
        "device": lambda v: isinstance(v, str),
        "compile": lambda v: isinstance(v, bool),
        "fsdp": lambda v: isinstance(v, bool),
        "restore_best": lambda v: isinstance(v, bool),
        "optimizer": lambda v: True,  # a choice: the allowed strings say it all
        "precision": lambda v: True,
        "checkpoint_error": lambda v: True,
    }.get(field, lambda v: type(v) is int or (type(v) is float and field not in integers))
    if not right_type(value):
        kind = type(value)
        module = "" if kind.__module__ == "builtins" else f"{kind.__module__}."
        assert message.endswith(f"got {value!r} of type {module}{kind.__name__}"), message
    else:
        assert message.endswith(f"got {value!r}"), message


def test_config_keeps_valid_values_and_stores_them_as_plain_python():
    config = TrainerConfig(
        lr=np.float64(1e-3),
        min_lr_ratio=0,
        betas=[0.9, np.float32(0.5)],
        max_steps=np.int64(7),
        seed=np.int64(-1),
        grad_clip=1,
        time_limit_s=60,
        device="cuda:12",  # which devices exist is the Trainer's question, not the config's
    )
    values = config.to_dict()
    assert values["lr"] == 1e-3 and type(values["lr"]) is float
    assert values["min_lr_ratio"] == 0.0 and type(values["min_lr_ratio"]) is float
    assert values["betas"] == (0.9, 0.5) and type(values["betas"]) is tuple
    assert all(type(b) is float for b in values["betas"])
    assert values["max_steps"] == 7 and type(values["max_steps"]) is int
    assert values["seed"] == -1 and type(values["seed"]) is int
    assert values["grad_clip"] == 1.0 and type(values["grad_clip"]) is float
    assert values["time_limit_s"] == 60.0 and values["device"] == "cuda:12"
    for device in ("auto", "cpu", "cuda", "cuda:0", "mps"):
        assert TrainerConfig(device=device).device == device
    for device, name in ((torch.device("cpu"), "cpu"), (torch.device("cuda", 1), "cuda:1")):
        assert TrainerConfig(device=device).device == name  # a torch.device, by its name
    for seed in (-(2**63), 0, 2**64 - 1):
        assert TrainerConfig(seed=seed).seed == seed
    for decay in (None, 0.5):
        assert TrainerConfig(ema_decay=decay, checkpoint_every=None).ema_decay == decay
    # An older run's saved settings (ints where floats are now stored, betas as a list) are
    # the same settings to a resume.
    old = {"lr": 1, "betas": [0.9, 0.95], "weight_decay": 0, "grad_clip": 1, "seed": 3}
    assert TrainerConfig(lr=1, weight_decay=0, grad_clip=1, seed=3).resume_changes(old) == {}


_RULES = {  # (name, finite values allowed): an oracle written apart from config.py
    "lr": lambda x: x > 0,
    "min_lr_ratio": lambda x: 0 <= x <= 1,
    "weight_decay": lambda x: x >= 0,
    "grad_clip": lambda x: x > 0,
    "spike_factor": lambda x: x > 1,
    "ema_decay": lambda x: 0 < x < 1,
    "time_limit_s": lambda x: x > 0,
}


@given(
    field=st.sampled_from(sorted(_RULES)),
    value=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(10**6), max_value=10**6),
        st.booleans(),
        st.text(max_size=4),
    ),
)
def test_real_fields_take_exactly_the_finite_numbers_in_range(field, value):
    number = not isinstance(value, bool | str)
    valid = number and math.isfinite(value) and _RULES[field](value)
    if not valid:
        with pytest.raises(ValueError, match=rf"^TrainerConfig\.{field} must be .*, got "):
            TrainerConfig(**{field: value})
        return
    config = TrainerConfig(**{field: value})
    assert getattr(config, field) == value and type(getattr(config, field)) is float
    # A checkpoint's copy of the settings compares equal on resume (tuples come back as lists).
    saved = {k: list(v) if isinstance(v, tuple) else v for k, v in config.to_dict().items()}
    assert config.resume_changes(saved) == {}
    assert TrainerConfig(**config.to_dict()) == config


@given(seed=st.integers(min_value=-(2**66), max_value=2**66))
def test_seed_is_accepted_exactly_in_torch_manual_seed_range(seed):
    try:
        torch.Generator().manual_seed(seed)
        torch_takes_it = True
    except (RuntimeError, ValueError):
        torch_takes_it = False
    if torch_takes_it:
        assert TrainerConfig(seed=seed).seed == seed
    else:
        with pytest.raises(ValueError, match=rf"TrainerConfig\.seed must be .*got {seed}$"):
            TrainerConfig(seed=seed)


def test_seeds_at_the_ends_of_the_range_train_and_evaluate():
    # The train-split evaluation seeds its own generator with seed + 1_000_003, taken modulo
    # 2**64 as torch takes a negative seed: seed 2**64 - 1 is seed -1.
    top, minus_one = make_trainer(seed=2**64 - 1), make_trainer(seed=-1)
    assert top.evaluate()["train_loss"] == minus_one.evaluate()["train_loss"]
    assert torch.equal(top.next_batch()[0], minus_one.next_batch()[0])
    assert top.evaluate()["train_loss"] != make_trainer(seed=0).evaluate()["train_loss"]


def test_config_with_numpy_numbers_saves_checkpoints_that_load(tmp_path):
    # torch.load(weights_only=True) refuses numpy scalars: stored as they came, such a
    # setting made every checkpoint of the run unreadable.
    trainer = make_trainer(tmp_path, max_steps=2, eval_every=2, lr=np.float64(3e-3))
    trainer.fit()
    saved = trainer.checkpoints.load("last")["trainer_config"]
    assert saved["lr"] == 3e-3 and type(saved["lr"]) is float
    assert make_trainer(tmp_path, max_steps=4, eval_every=2, lr=3e-3).resume()


def _refused_before_writing(tmp_path, message, **overrides):
    checkpoints = CheckpointManager(tmp_path / "checkpoints")
    loggers = [JSONLLogger(tmp_path / "metrics.jsonl")]
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    with pytest.raises(ValueError, match=message):
        make_trainer(checkpoints=checkpoints, loggers=loggers, **overrides)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_a_cuda_device_without_cuda_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        _refused_before_writing(
            tmp_path,
            rf"TrainerConfig.device='{device}' needs CUDA, which is not available here",
            device=device,
        )
    assert make_trainer(device="auto").device == torch.device("cpu")


def test_a_cuda_index_the_machine_lacks_is_refused_before_anything_is_written(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    _refused_before_writing(
        tmp_path,
        r"TrainerConfig.device='cuda:2' names a CUDA device this machine lacks: it has 2 "
        r"\(cuda:0 to cuda:1\)",
        device="cuda:2",
    )
    # Under torchrun "cuda" becomes cuda:<local rank>: a rank past the device count is refused.
    from transformer_kit.distributed import DistributedContext

    ranks = DistributedContext(rank=2, world_size=3, local_rank=2)
    monkeypatch.setattr("transformer_kit.trainer.loop.init_distributed", lambda device: ranks)
    _refused_before_writing(
        tmp_path,
        r"TrainerConfig.device='cuda' resolves to cuda:2, but this machine has 2 CUDA "
        r"device\(s\) \(cuda:0 to cuda:1\)",
        device="cuda",
    )


def test_mps_without_mps_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    _refused_before_writing(
        tmp_path, r"TrainerConfig.device='mps' needs Apple's MPS backend", device="mps"
    )


def test_fp16_on_cpu_is_refused():
    with pytest.raises(ValueError, match="fp16"):
        make_trainer(precision="fp16")


def test_resume_refuses_a_different_model_config(tmp_path):
    make_trainer(tmp_path, max_steps=2, eval_every=2).fit()
    torch.manual_seed(0)
    other = GPT(GPTConfig(vocab_size=24, block_size=16, n_layer=2, n_head=2, d_model=64))
    data = corpus()
    trainer = Trainer(
        other,
        TrainerConfig(max_steps=4),
        TokenDataset(data, 16),
        checkpoints=CheckpointManager(tmp_path / "checkpoints"),
    )
    with pytest.raises(CheckpointError, match="d_model"):
        trainer.resume()


def test_resume_refuses_other_fixed_settings_and_loads_nothing(tmp_path):
    make_trainer(tmp_path, max_steps=3, eval_every=3).fit()
    saved = CheckpointManager(tmp_path / "checkpoints").load("last")["trainer_config"]
    # Without the check, a new lr and betas would be silently replaced by the optimizer's saved
    # ones, and a new batch size would silently take effect.
    trainer = make_trainer(tmp_path, max_steps=6, lr=1e-3, betas=(0.8, 0.9), batch_size=2)
    before = weights(trainer.model)
    with pytest.raises(CheckpointError) as caught:
        trainer.resume()
    message = str(caught.value)
    for text in ("batch_size 4 -> 2", "lr 0.003 -> 0.001", "betas [0.9, 0.95] -> (0.8, 0.9)"):
        assert text in message
    assert "strict=False" in message and "max_steps" not in message
    assert trainer.step == 0
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in before.items())
    assert saved["lr"] == 3e-3 and saved["batch_size"] == 4


def test_resume_refuses_to_start_fresh_over_checkpoints_it_cannot_read(tmp_path):
    make_trainer(tmp_path, max_steps=4, eval_every=2).fit()
    folder = tmp_path / "checkpoints"
    assert sorted(f.name for f in folder.glob("*.pt")) == ["best.pt", "last.pt"]
    for name in ("best.pt", "last.pt"):  # every listed checkpoint fails its checksum
        data = bytearray((folder / name).read_bytes())
        data[-1] ^= 0xFF
        (folder / name).write_bytes(bytes(data))
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    refused = r"holds the checkpoints \['best.pt', 'last.pt'\], but "
    trainer = make_trainer(tmp_path, max_steps=4, eval_every=2)
    with pytest.raises(CheckpointError, match=refused + "none of the listed ones verifies"):
        trainer.resume()
    assert trainer.step == 0
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before
    # Without manifest.json nothing is listed, and the files are still not written over.
    (folder / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=refused + "its manifest.json lists none of them"):
        make_trainer(tmp_path, max_steps=4, eval_every=2).resume()
    # One good checkpoint is enough: last, then periodic ones newest first, then best.
    make_trainer(tmp_path / "two", max_steps=4, eval_every=2).fit()
    manager = CheckpointManager(tmp_path / "two" / "checkpoints")
    (tmp_path / "two" / "checkpoints" / "last.pt").write_bytes(b"torn")
    again = make_trainer(tmp_path / "two", max_steps=4, eval_every=2)
    assert again.resume() and again.step == manager.best_step


@pytest.mark.parametrize("left", ["sharded-last", "sharded-last.old"])
def test_resume_without_fsdp_refuses_a_folder_that_holds_only_shards(tmp_path, left):
    # sharded-last.old alone is what a crash between save_sharded's two renames leaves.
    (tmp_path / "checkpoints" / left).mkdir(parents=True)
    trainer = make_trainer(tmp_path)
    with pytest.raises(CheckpointError, match=f"holds only the sharded {left}/, written with"):
        trainer.resume()
    assert make_trainer(tmp_path / "empty").resume() is False


def test_resume_with_fsdp_refuses_whole_checkpoints_and_a_broken_shard_folder(
    tmp_path, monkeypatch
):
    import torch.distributed as dist

    from transformer_kit.distributed import DistributedContext, shutdown_distributed
    from transformer_kit.trainer import loop

    make_trainer(tmp_path, max_steps=2, eval_every=2).fit()
    (tmp_path / "broken" / "checkpoints" / "sharded-last").mkdir(parents=True)  # no .metadata
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        # One real rank; the context only has to say "distributed" for fsdp=True to be allowed.
        monkeypatch.setattr(loop, "init_distributed", lambda device: DistributedContext(0, 1, 0))
        monkeypatch.setattr(DistributedContext, "enabled", property(lambda self: True))
        with pytest.raises(CheckpointError, match=r"holds only whole-model checkpoints \['best"):
            make_trainer(tmp_path, fsdp=True).resume()
        with pytest.raises(CheckpointError, match="holds sharded-last/ but no sharded checkpoint"):
            make_trainer(tmp_path / "broken", fsdp=True).resume()
        assert make_trainer(tmp_path / "empty", fsdp=True).resume() is False
    finally:
        shutdown_distributed()


def test_a_new_run_into_a_folder_with_checkpoints_is_refused_before_writing(tmp_path):
    make_trainer(tmp_path, max_steps=4, eval_every=2).fit()
    folder = tmp_path / "checkpoints"
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    # Without the check this run would write its last.pt over the first run's and keep that
    # run's best.pt (the manifest's best metric), which restore_best would then load.
    fresh = make_trainer(tmp_path, max_steps=2, eval_every=1, restore_best=True, seed=5)
    untouched = weights(fresh.model)
    with pytest.raises(
        CheckpointError, match=r"already holds the checkpoints \['best.pt', 'last.pt'\]"
    ):
        fresh.fit()
    assert fresh.step == 0 and {f.name: f.read_bytes() for f in folder.iterdir()} == before
    assert all(torch.equal(v, fresh.model.state_dict()[k]) for k, v in untouched.items())
    (tmp_path / "shards" / "checkpoints" / "sharded-last").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"holds the checkpoints \['sharded-last/'\]"):
        make_trainer(tmp_path / "shards").check_fresh_start()
    resumed = make_trainer(tmp_path, max_steps=6, eval_every=2)
    assert resumed.resume()
    resumed.check_fresh_start()  # a resumed run continues in its own folder
    assert resumed.fit()["step"] == 6
    make_trainer(tmp_path / "empty", max_steps=1, eval_every=1).fit()  # an empty folder is fine


class _StopAtStart:
    def on_train_start(self, trainer: Trainer) -> bool:
        return True


def test_a_run_that_continues_is_never_refused_even_at_step_0(tmp_path):
    # A callback that stops at once leaves a step-0 checkpoint: the same trainer fits again,
    # and a new one resumes it and fits on.
    first = make_trainer(tmp_path / "a", max_steps=2, eval_every=1, callbacks=[_StopAtStart()])
    first.fit()
    assert first.step == 0 and first.checkpoints.last_step == 0
    first.callbacks, first.stop_requested = [], False
    assert first.fit()["step"] == 2
    again = make_trainer(tmp_path / "b", max_steps=2, eval_every=1, callbacks=[_StopAtStart()])
    again.fit()
    later = make_trainer(tmp_path / "b", max_steps=2, eval_every=1)
    assert later.resume() and later.step == 0
    assert later.fit()["step"] == 2
    # Initial weights saved by hand before fit() belong to this run too.
    kept = make_trainer(tmp_path / "c", max_steps=2, eval_every=1)
    kept.save_checkpoint()
    assert kept.fit()["step"] == 2
    # What a trainer continues is the run in its folder: pointed at another run's folder, the
    # same trainer is refused there.
    kept.checkpoints = CheckpointManager(tmp_path / "b" / "checkpoints")
    kept.config = dataclasses.replace(kept.config, max_steps=4)
    with pytest.raises(CheckpointError, match="already holds the checkpoints"):
        kept.fit()
    assert kept.step == 2


def test_resume_without_a_checkpoint_rewinds_the_logs_of_a_run_that_died_before_one(tmp_path):
    log = tmp_path / "metrics.jsonl"
    JSONLLogger(log).log({"loss": 3.0}, 1)  # steps logged by a run killed before it saved
    trainer = make_trainer(tmp_path, max_steps=2, eval_every=2, loggers=[JSONLLogger(log)])
    assert trainer.resume() is False
    assert read_metrics(log) == []
    trainer.fit()
    assert [r["step"] for r in read_metrics(log) if "loss" in r] == [1, 2]


def test_resume_not_strict_warns_and_keeps_the_optimizers_saved_lr(tmp_path, caplog):
    make_trainer(tmp_path, max_steps=3, eval_every=3).fit()
    trainer = make_trainer(tmp_path, max_steps=6, lr=1e-3, batch_size=2)
    with caplog.at_level(logging.WARNING, logger="transformer_kit"):
        assert trainer.resume(strict=False) and trainer.step == 3
    assert "lr 0.003 -> 0.001" in caplog.text and "batch_size 4 -> 2" in caplog.text
    assert trainer.scheduler.base_lrs[0] == 3e-3  # the optimizer's state won, as documented
    assert trainer.next_batch()[0].shape == (2, 16)  # the new batch size took effect


def test_resume_may_extend_max_steps_and_change_where_it_runs(tmp_path):
    make_trainer(tmp_path, max_steps=3, eval_every=3).fit()
    longer = make_trainer(
        tmp_path, max_steps=6, warmup_steps=3, min_lr_ratio=0.2, eval_every=2, time_limit_s=60.0,
        ema_decay=0.9,  # a run may start keeping a weight average when resumed (averaging.md)
    )  # fmt: skip
    assert longer.resume() and longer.step == 3
    longer.fit()
    assert longer.step == 6 and longer.ema is not None and longer.ema.updates == 4


def test_resume_of_a_checkpoint_without_a_trainer_config_checks_nothing(tmp_path, monkeypatch):
    make_trainer(tmp_path, max_steps=3, eval_every=3).fit()
    trainer = make_trainer(tmp_path, max_steps=6, lr=1e-3)
    load = trainer.checkpoints.load_latest_good

    def older():  # a checkpoint written before trainer configs were saved
        name, state = load()
        return name, {k: v for k, v in state.items() if k != "trainer_config"}

    monkeypatch.setattr(trainer.checkpoints, "load_latest_good", older)
    assert trainer.resume() and trainer.step == 3


@pytest.mark.parametrize("name", RESUME_FIXED)
def test_resume_changes_names_each_fixed_setting(name):
    base = TrainerConfig(grad_clip=1.0)
    other = {
        "batch_size": 7, "grad_accum_steps": 2, "lr": 1e-2, "optimizer": "adafactor",
        "weight_decay": 0.0, "betas": (0.8, 0.9),
        "grad_clip": None, "eval_batches": 3, "seed": 9,
    }  # fmt: skip
    assert set(other) == set(RESUME_FIXED)
    saved = {k: list(v) if isinstance(v, tuple) else v for k, v in base.to_dict().items()}
    changed = dataclasses.replace(base, **{name: other[name]})
    assert base.resume_changes(saved) == {}
    assert changed.resume_changes(saved) == {name: (saved[name], other[name])}
    del saved[name]  # an older checkpoint without it: not compared
    assert changed.resume_changes(saved) == {}


# --------------------------------------------------------------------------- real processes
def run_child(out: Path, *args: str, nproc: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    if nproc == 1:
        cmd = [sys.executable, str(CHILD), "--out", str(out), *args]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            "--standalone", str(CHILD), "--out", str(out), *args,
        ]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def losses(path: Path) -> dict[int, float]:
    return {int(r["step"]): r["loss"] for r in read_metrics(path) if "loss" in r}


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical_and_a_broken_resume_is_not(tmp_path):
    # Dropout, staged augmentation and early stopping all carry state across the kill.
    straight = run_child(tmp_path / "straight", "--steps", "12", "--augment")
    assert straight.returncode == 0, straight.stderr
    killed = run_child(tmp_path / "killed", "--steps", "12", "--kill-at", "8", "--augment")
    assert killed.returncode == -9  # SIGKILL: no cleanup ran
    resumed = run_child(tmp_path / "killed", "--steps", "12", "--resume", "--augment")
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "straight" / "final.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "final.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    straight_losses = losses(tmp_path / "straight" / "metrics.jsonl")
    resumed_losses = losses(tmp_path / "killed" / "metrics.jsonl")
    assert sorted(resumed_losses) == list(range(1, 13))  # steps 7-8 re-run, not duplicated
    assert resumed_losses == straight_losses

    # Control: resuming without the data position and RNG must be detectably different.
    run_child(tmp_path / "broken", "--steps", "12", "--kill-at", "8", "--augment")
    broken = run_child(
        tmp_path / "broken", "--steps", "12", "--resume", "--broken-resume", "--augment"
    )
    assert broken.returncode == 0, broken.stderr
    c = torch.load(tmp_path / "broken" / "final.pt", weights_only=True)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.slow
def test_shutdown_distributed_destroys_the_group_and_is_a_no_op_without_one(tmp_path):
    import torch.distributed as dist

    from transformer_kit.distributed import shutdown_distributed

    shutdown_distributed()  # no group: nothing to do, nothing raised
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    assert dist.is_initialized()
    shutdown_distributed()
    assert not dist.is_initialized()


def test_fit_lets_go_of_its_ddp_wrapper_and_wraps_again_for_another_fit(tmp_path, monkeypatch):
    # A process group still held by DDP's reducer after destroy_process_group() dies whenever
    # the trainer is collected; for gloo at interpreter exit that hung the two-process test.
    import gc
    import weakref

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from transformer_kit.distributed import DistributedContext, shutdown_distributed
    from transformer_kit.trainer import loop

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        # One real rank; the context only has to say "distributed" for the Trainer to use DDP.
        monkeypatch.setattr(loop, "init_distributed", lambda device: DistributedContext(0, 1, 0))
        monkeypatch.setattr(DistributedContext, "enabled", property(lambda self: True))
        wrappers: list[str] = []

        class Spy:
            def on_step_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
                wrappers.append(type(trainer._forward).__name__)

        trainer = make_trainer(max_steps=2, eval_every=2, callbacks=[Spy()])
        held = weakref.ref(trainer._forward)
        assert isinstance(held(), DistributedDataParallel)
        trainer.fit()
        gc.collect()
        assert held() is None  # nothing keeps the reducer, nor through it the group
        assert trainer._forward is trainer.model
        trainer.config = dataclasses.replace(trainer.config, max_steps=4)
        trainer.fit()  # trains on with a fresh DDP wrapper
        assert wrappers == ["DistributedDataParallel"] * 4
        assert trainer.step == 4 and trainer._forward is trainer.model
    finally:
        shutdown_distributed()
    assert not dist.is_initialized()


def test_two_process_gloo_equals_single_process_with_the_same_global_batch(tmp_path):
    single = run_child(tmp_path / "one", "--steps", "4", "--batch-size", "8", "--dropout", "0")
    assert single.returncode == 0, single.stderr
    double = run_child(
        tmp_path / "two", "--steps", "4", "--batch-size", "4", "--dropout", "0", nproc=2
    )
    assert double.returncode == 0, double.stderr
    a = torch.load(tmp_path / "one" / "final.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "final.pt", weights_only=True)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
    # The all-reduced loss of each step equals the single process's loss on the same windows.
    one, two = (
        losses(tmp_path / "one" / "metrics.jsonl"),
        losses(tmp_path / "two" / "metrics.jsonl"),
    )
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5)
    assert one[4] < one[1]


@pytest.mark.slow
def test_fsdp_two_processes_stop_resume_and_match_a_single_process(tmp_path):
    single = run_child(tmp_path / "one", "--steps", "4", "--batch-size", "8", "--dropout", "0")
    assert single.returncode == 0, single.stderr
    common = ["--steps", "4", "--batch-size", "4", "--dropout", "0", "--fsdp"]
    first = run_child(tmp_path / "sharded", *common, "--stop-at", "2", nproc=2)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "sharded" / "checkpoints" / "sharded-last").is_dir()
    second = run_child(tmp_path / "sharded", *common, "--resume", nproc=2)
    assert second.returncode == 0, second.stderr
    a = torch.load(tmp_path / "one" / "final.pt", weights_only=True)
    b = torch.load(tmp_path / "sharded" / "final.pt", weights_only=True)
    assert sorted(a) == sorted(b)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
    steps = sorted(losses(tmp_path / "sharded" / "metrics.jsonl"))
    assert steps == [1, 2, 3, 4]
    # Whole and sharded checkpoints do not convert: a resume in the other format is refused
    # rather than starting a new run beside the old one.
    whole = run_child(tmp_path / "one", *common, "--resume", nproc=2)
    assert whole.returncode != 0 and "written with fsdp=False" in whole.stderr
    shards = run_child(tmp_path / "sharded", *common[:-1], "--resume")
    assert shards.returncode != 0 and "written with fsdp=True" in shards.stderr


def test_fsdp_needs_several_processes():
    with pytest.raises(ValueError, match="fsdp=True shards over processes"):
        make_trainer(fsdp=True)
    with pytest.raises(ValueError, match="spike_factor"):
        TrainerConfig(fsdp=True, spike_factor=3.0)


def test_ema_run_evaluates_checkpoints_and_restores_the_average(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=8, eval_every=4, ema_decay=0.9)
    final = trainer.fit()
    last = trainer.checkpoints.load("last")
    assert last["ema"]["updates"] == 9  # the copy at the start, then one per step
    assert last["model"].keys() == last["ema"]["weights"].keys()
    # The reported losses are the average's; raw_* are the trained weights' own.
    judge = make_trainer()
    judge.model.load_state_dict(last["ema"]["weights"])
    assert final["val_loss"] == judge.evaluate()["val_loss"]
    judge.model.load_state_dict(last["model"])
    assert final["raw_val_loss"] == judge.evaluate()["val_loss"]
    assert final["raw_val_loss"] != final["val_loss"]
    # fit() leaves the trained weights in the model, not the average.
    for key, value in last["model"].items():
        assert torch.equal(trainer.model.state_dict()[key], value), key


def test_ema_resume_matches_an_uninterrupted_run(tmp_path):
    straight = make_trainer(tmp_path / "a", max_steps=6, checkpoint_every=3, ema_decay=0.8)
    straight.fit()

    class StopAt3:
        def on_step_end(self, trainer, metrics):
            return trainer.step == 3

    first = make_trainer(
        tmp_path / "b", max_steps=6, checkpoint_every=3, ema_decay=0.8, callbacks=[StopAt3()]
    )
    first.fit()
    state_at_3 = first.checkpoints.load("last")
    second = make_trainer(tmp_path / "b", max_steps=6, checkpoint_every=3, ema_decay=0.8)
    assert second.resume() and second.step == 3 and second.ema.updates == 4
    second.fit()
    for a, b in zip(straight.ema.module.parameters(), second.ema.module.parameters(), strict=True):
        assert torch.equal(a, b)
    # A checkpoint without an average starts one from its weights (and says so).
    third = make_trainer(max_steps=6, ema_decay=0.8)
    state = dict(state_at_3, ema=None)
    third.load_state_dict(state)
    assert third.ema.updates == 1
    for key, value in third.ema.module.state_dict().items():
        assert torch.equal(value, state["model"][key]), key


def test_restore_best_with_ema_loads_the_best_average(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=6, eval_every=3, ema_decay=0.9, restore_best=True)
    trainer.fit()
    best = trainer.checkpoints.load("best")
    for key, value in best["ema"]["weights"].items():
        assert torch.equal(trainer.model.state_dict()[key], value), key


@pytest.mark.parametrize("decay", [0.0, 1.0, True, "0.9"])
def test_ema_decay_outside_the_open_interval_is_refused(decay):
    with pytest.raises(
        ValueError, match=rf"ema_decay must be a number in \(0, 1\) or None, got {decay!r}"
    ):
        TrainerConfig(ema_decay=decay)


def test_ema_with_fsdp_is_refused_with_its_reason():
    with pytest.raises(ValueError, match="ema_decay=0.9 is not supported with fsdp=True.*sharded"):
        TrainerConfig(ema_decay=0.9, fsdp=True)


def test_ema_evaluation_sees_the_average_and_leaves_the_trained_weights(tmp_path):
    seen = {}

    class Probe:
        def on_evaluate(self, trainer, metrics):
            seen["weights"] = weights(trainer.model)
            seen["raw"] = metrics["raw_val_loss"]  # callbacks see the raw losses too

    trainer = make_trainer(max_steps=4, eval_every=100, ema_decay=0.9, callbacks=[Probe()])
    for _ in range(4):
        trainer._optimizer_step()
        trainer.step += 1
    before = weights(trainer.model)
    metrics = trainer._evaluate_and_report()
    for key, value in trainer.ema.module.state_dict().items():
        assert torch.equal(seen["weights"][key], value), key
    for key, value in before.items():
        assert torch.equal(trainer.model.state_dict()[key], value), key
    assert seen["raw"] == metrics["raw_val_loss"] != metrics["val_loss"]


def test_ema_skips_non_finite_steps_and_rolls_back_with_the_model(tmp_path):
    trainer = make_trainer(trainer_cls=NanAt, nan_steps={2}, max_steps=4, ema_decay=0.9)
    trainer.fit()
    assert trainer.bad_steps == 1 and trainer.ema.updates == 4  # 1 + three steps taken

    trainer = make_trainer(
        tmp_path, max_steps=4, checkpoint_every=2, ema_decay=0.9, spike_factor=5.0
    )
    for _ in range(2):
        trainer._optimizer_step()
        trainer.step += 1
    trainer.save_checkpoint()
    saved = {k: v.clone() for k, v in trainer.ema.module.state_dict().items()}
    for _ in range(2):
        trainer._optimizer_step()
        trainer.step += 1
    trainer.loss_mean = 1e-9  # any loss is a spike now
    trainer._watch_for_spike(1.0)
    assert trainer.rollbacks == 1 and trainer.ema.updates == 3
    for key, value in saved.items():
        assert torch.equal(trainer.ema.module.state_dict()[key], value), key


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989),
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA H100 NVL", 835),
        ("NVIDIA H200", 989),
        ("NVIDIA A100-SXM4-80GB", 312),
        ("NVIDIA A10", 125),
        ("NVIDIA L40S", 362),
        ("NVIDIA L4", 121),
        ("Tesla T4", None),
    ],
)
def test_peak_flops_reads_the_board_from_the_device_name(
    monkeypatch: pytest.MonkeyPatch, name: str, tflops: int | None
) -> None:
    # The MFU metric divides by this peak: a PCIe H100 taken for an SXM one would read 24% low.
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    expected = None if tflops is None else tflops * 1e12
    assert peak_flops(torch.device("cuda")) == expected
    assert peak_flops(torch.device("cpu")) is None


def test_trainer_docstring_examples_run():
    import doctest

    from transformer_kit import trainer as trainer_package
    from transformer_kit.trainer import config as config_module

    for module in (trainer_package, config_module):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__

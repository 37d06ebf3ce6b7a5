"""Checkpoints: round trips, corruption, crashes at every write stage, full disks, rotation."""

from __future__ import annotations

import doctest
import errno
import hashlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from transformer_kit import __version__
from transformer_kit.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointManager,
    Stateful,
    capture_rng_state,
    check_config,
    check_run_folder,
    export_weights,
    load_checkpoint,
    load_weights,
    restore_rng_state,
    save_checkpoint,
)

CHILD = Path(__file__).with_name("_checkpoint_child.py")


def small_state(step: int, numel: int = 8) -> dict:
    return {"step": step, "weights": torch.full((numel,), float(step)), "note": f"step {step}"}


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp." in p.name)


def assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert type(a) is type(b) and a == b


# ---------------------------------------------------------------------- one file
def test_nested_state_round_trips_with_versions_added(tmp_path):
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": 7,
        "loss": 2.5,
        "name": "run-a",
        "flags": [True, None, 3, 1.5, "x", [1, 2]],
        "nested": {"a": {"b": torch.arange(5, dtype=torch.int64)}, "c": (1, 2)},
    }
    path = tmp_path / "deep" / "folder" / "last.pt"
    digest = save_checkpoint(path, state)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_checkpoint(path, expected_sha256=digest)
    assert loaded.pop("versions") == {"library": __version__, "format": FORMAT_VERSION}
    assert_same(state, loaded)
    assert "versions" not in state  # the caller's mapping is not modified
    fresh = torch.optim.AdamW(nn.Linear(3, 2).parameters())
    fresh.load_state_dict(loaded["optimizer"])
    assert fresh.state_dict()["state"][0]["step"] == 1


def test_stateful_values_are_saved_as_their_state_dict(tmp_path):
    model = nn.Linear(2, 2)
    assert isinstance(model, Stateful)
    save_checkpoint(tmp_path / "m.pt", {"model": model, "versions": {"library": "custom"}})
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert_same(dict(model.state_dict()), dict(loaded["model"]))
    assert loaded["versions"] == {"library": "custom", "format": FORMAT_VERSION}


def test_newer_format_is_refused_with_upgrade_message(tmp_path):
    path = tmp_path / "future.pt"
    save_checkpoint(path, {"step": 1, "versions": {"format": FORMAT_VERSION + 1, "library": "9.9"}})
    with pytest.raises(CheckpointError, match=rf"format {FORMAT_VERSION + 1}.*upgrade") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "9.9" in str(info.value)


def test_sha256_mismatch_names_the_file(tmp_path):
    path = tmp_path / "a.pt"
    save_checkpoint(path, small_state(1))
    with pytest.raises(CheckpointError, match="sha256 mismatch") as info:
        load_checkpoint(path, expected_sha256="0" * 64)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError, match="expected_sha256 must be 64 hex digits, got 'abc'"):
        load_checkpoint(path, expected_sha256="abc")


@pytest.mark.parametrize("keep", [0, 10, 0.5, 0.97])
def test_truncated_file_names_the_file(tmp_path, keep):
    path = tmp_path / "a.pt"
    save_checkpoint(path, small_state(1, numel=1000))
    data = path.read_bytes()
    path.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pt")


class Custom:
    """Pickles fine, but weights-only loading must refuse to rebuild it."""


def test_loading_is_weights_only(tmp_path, monkeypatch):
    path = tmp_path / "a.pt"
    save_checkpoint(path, {"obj": Custom()})
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    with pytest.raises(CheckpointError, match="weights-only loading refuses") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert calls and all(kwargs.get("weights_only") is True for kwargs in calls)


def test_failed_fsync_keeps_previous_file_and_removes_temp(tmp_path, monkeypatch):
    path = tmp_path / "a.pt"
    save_checkpoint(path, small_state(1))
    before = path.read_bytes()

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(CheckpointError, match="no space left on device \\(ENOSPC\\)") as info:
        save_checkpoint(path, small_state(2))
    assert str(path) in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    monkeypatch.undo()
    assert path.read_bytes() == before and load_checkpoint(path)["step"] == 1
    assert temp_files(tmp_path) == []


def test_unpicklable_state_fails_cleanly(tmp_path):
    path = tmp_path / "a.pt"
    save_checkpoint(path, small_state(1))
    with pytest.raises(CheckpointError, match="could not write") as info:
        save_checkpoint(path, {"fn": lambda: 0})
    assert info.value.__cause__ is not None
    assert load_checkpoint(path)["step"] == 1 and temp_files(tmp_path) == []


# ---------------------------------------------------------------------- RNG
def draw() -> tuple:
    return (
        random.random(),
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        float(np.random.normal()),
        torch.rand(3).tolist(),
    )


def test_rng_state_restores_through_a_checkpoint_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    draw()
    random.gauss(0, 1)  # leave a cached gaussian in both python's and numpy's state
    np.random.normal()
    save_checkpoint(tmp_path / "rng.pt", {"rng": capture_rng_state()})
    expected = draw()
    draw()
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert draw() == expected
    # Control: without the restore the generators have moved on and give other numbers.
    assert draw() != expected


def test_restore_rng_state_names_missing_parts():
    with pytest.raises(ValueError, match=r"missing \['numpy'\]"):
        restore_rng_state({"python": {}, "torch": torch.get_rng_state()})


# ---------------------------------------------------------------------- config
def test_check_config_names_each_differing_field():
    saved = {"n_layer": 2, "d_model": 32, "dropout": 0.1, "shape": (1, 2), "opt": {"lr": 1e-3}}
    current = {"n_layer": 4, "d_model": 32, "bias": True, "shape": [1, 2], "opt": {"lr": 3e-4}}
    with pytest.raises(CheckpointError) as info:
        check_config(saved, current)
    message = str(info.value)
    assert "n_layer: saved 2, current 4" in message
    assert "opt.lr: saved 0.001, current 0.0003" in message
    assert "dropout: only in the saved config (0.1)" in message
    assert "bias: only in the current config (True)" in message
    assert "d_model" not in message and "shape" not in message
    check_config(saved, dict(saved))


# ---------------------------------------------------------------------- manager
SEQUENCE = [(1, 2.0), (2, 1.0), (3, 3.0), (4, math.nan), (5, 2.5), (6, 1.0), (7, 3.0)]


@pytest.mark.parametrize(
    "mode, best_steps", [("min", [1, 2, 2, 2, 2, 2, 2]), ("max", [1, 1, 3, 3, 3, 3, 3])]
)
def test_best_follows_mode_and_nan_never_wins(tmp_path, mode, best_steps):
    manager = CheckpointManager(tmp_path, mode=mode)
    for (step, value), best in zip(SEQUENCE, best_steps, strict=True):
        written = manager.save(small_state(step), step=step, metrics={"val_loss": value})
        assert (tmp_path / "best.pt" in written) == (best == step)
        assert manager.best_step == best and manager.load("best")["step"] == best
    assert manager.best_metric == dict(SEQUENCE)[best_steps[-1]]


def test_nan_first_and_missing_monitor_write_no_best(tmp_path):
    manager = CheckpointManager(tmp_path, monitor="acc", mode="max")
    assert manager.save(small_state(1), step=1, metrics={"acc": math.nan}) == [tmp_path / "last.pt"]
    manager.save(small_state(2), step=2, metrics={"loss": 0.1})
    assert manager.best_step is None and not manager.exists("best")
    manager.save(small_state(3), step=3, metrics={"acc": 0.5})
    assert manager.best_step == 3 and manager.best_metric == 0.5


def test_rotation_keeps_newest_periodic_and_never_best_or_last(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2, every_steps=10)
    for step in range(10, 70, 10):
        manager.save(small_state(step), step=step, metrics={"val_loss": step if step > 10 else 0})
    manager.save(small_state(75), step=75, metrics={"val_loss": 9.0})
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["best.pt", "last.pt", "manifest.json", "step-00000050.pt", "step-00000060.pt"]
    assert manager.load("best")["step"] == 10 and manager.load("last.pt")["step"] == 75


def disk_state(folder: Path) -> dict[str, int]:
    """The step inside every checkpoint file in `folder` (loading each one fully)."""
    return {p.stem: load_checkpoint(p)["step"] for p in folder.glob("*.pt")}


@settings(max_examples=40)
@given(
    gaps=st.lists(st.integers(1, 3), min_size=1, max_size=8),
    values=st.lists(
        st.one_of(st.sampled_from([0.0, 1.0, math.nan]), st.floats(-5, 5)), min_size=8, max_size=8
    ),
    keep_last=st.integers(1, 3),
    every_steps=st.integers(1, 3),
    mode=st.sampled_from(["min", "max"]),
)
def test_manager_invariants_hold_after_every_save(gaps, values, keep_last, every_steps, mode):
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        manager = CheckpointManager(folder, keep_last=keep_last, every_steps=every_steps, mode=mode)
        steps, history = 0, []
        for gap, value in zip(gaps, values, strict=False):
            steps += gap
            manager.save(small_state(steps), step=steps, metrics={"val_loss": value})
            history.append((steps, value))
            on_disk = disk_state(folder)
            assert manager.last_step == steps and on_disk["last"] == steps
            finite = [(v, s) for s, v in history if not math.isnan(v)]
            if finite:
                pick = min if mode == "min" else max
                best_value = pick(v for v, _ in finite)
                first_best = next(s for v, s in finite if v == best_value)
                assert manager.best_step == first_best == on_disk["best"]
            else:
                assert manager.best_step is None and "best" not in on_disk
            periodic = sorted(s for s, _ in history if s % every_steps == 0)[-keep_last:]
            assert sorted(v for k, v in on_disk.items() if k.startswith("step-")) == periodic
            assert set(manager.manifest["checkpoints"]) == set(on_disk)


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def filled_manager(folder: Path) -> CheckpointManager:
    manager = CheckpointManager(folder, keep_last=2, every_steps=100)
    for step in (100, 200, 300, 400, 450):
        value = 1.0 if step == 200 else 5.0
        manager.save(small_state(step), step=step, metrics={"val_loss": value})
    return manager


def test_corrupt_last_is_detected_naming_the_previous_good_one(tmp_path):
    manager = filled_manager(tmp_path / "checkpoints")
    corrupt(tmp_path / "checkpoints" / "last.pt")
    with pytest.raises(CheckpointError) as info:
        manager.load("last")
    assert str(info.value) == (
        f"{tmp_path}/checkpoints/last.pt is corrupt (sha256 mismatch); the previous good "
        f"checkpoint is {tmp_path}/checkpoints/step-00000400.pt (step 400)"
    )
    (tmp_path / "checkpoints" / "step-00000400.pt").write_bytes(b"PK\x03\x04 short")
    with pytest.raises(CheckpointError, match=r"is corrupt \(10 bytes, the manifest records \d+\)"):
        manager.load("step-00000400")


def test_load_latest_good_falls_back_newest_first(tmp_path):
    folder = tmp_path / "c"
    manager = filled_manager(folder)
    assert manager.load_latest_good()[0] == "last"
    corrupt(folder / "last.pt")
    name, state = manager.load_latest_good()
    assert (name, state["step"]) == ("step-00000400", 400)
    (folder / "step-00000400.pt").unlink()
    corrupt(folder / "step-00000300.pt")
    name, state = manager.load_latest_good()
    assert (name, state["step"]) == ("best", 200)
    corrupt(folder / "best.pt")
    assert manager.load_latest_good() is None
    with pytest.raises(CheckpointError, match="no other checkpoint in .* verifies"):
        manager.load("best")


def test_reopen_continues_best_tracking_and_cleans_temp_files(tmp_path):
    first = CheckpointManager(tmp_path, every_steps=5)
    first.save(small_state(5), step=5, metrics={"val_loss": 1.0})
    (tmp_path / "last.pt.tmp.abc123").write_bytes(b"half")
    (tmp_path / "manifest.json.tmp.x").write_bytes(b"{")
    (tmp_path / "step-00000900.pt").write_bytes(b"not listed")
    (tmp_path / "notes.txt").write_text("mine")
    again = CheckpointManager(tmp_path, every_steps=5)
    assert temp_files(tmp_path) == []
    assert (tmp_path / "notes.txt").exists() and (tmp_path / "step-00000900.pt").exists()
    assert (again.best_step, again.best_metric, again.last_step) == (5, 1.0, 5)
    assert again.save(small_state(6), step=6, metrics={"val_loss": 2.0}) == [tmp_path / "last.pt"]
    again.save(small_state(7), step=7, metrics={"val_loss": 0.5})
    assert (again.best_step, again.load("best")["step"]) == (7, 7)


def test_failed_manager_save_leaves_committed_state(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, every_steps=1)
    manager.save(small_state(1), step=1, metrics={"val_loss": 1.0})
    before = manager.manifest

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(CheckpointError, match="ENOSPC"):
        manager.save(small_state(2), step=2, metrics={"val_loss": 0.1})
    monkeypatch.undo()
    assert manager.manifest == before and temp_files(tmp_path) == []
    assert CheckpointManager(tmp_path, every_steps=1).manifest == before
    assert manager.load("last")["step"] == 1


def test_manager_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="keep_last must be an int >= 1, got 0"):
        CheckpointManager(tmp_path, keep_last=0)
    with pytest.raises(ValueError, match="mode must be one of .* got 'median'"):
        CheckpointManager(tmp_path, mode="median")
    with pytest.raises(ValueError, match="every_steps must be an int >= 1 or None, got 0"):
        CheckpointManager(tmp_path, every_steps=0)
    manager = CheckpointManager(tmp_path)
    with pytest.raises(ValueError, match="step must be an int >= 0, got -1"):
        manager.save({}, step=-1)
    with pytest.raises(TypeError, match=r"metrics\['val_loss'\] must be a number, got 'low'"):
        manager.save({}, step=1, metrics={"val_loss": "low"})
    with pytest.raises(CheckpointError, match="no checkpoint 'best'"):
        manager.load("best")


# ---------------------------------------------------------------------- crashes and full disks
SAVE_STAGES = {
    # name: (patched call, its N-th call is the crash, step in the file afterwards)
    "before_write": ("torch.save", 1, 400),
    "mid_write": ("write", 65536, 400),
    "before_fsync": ("os.fsync", 1, 400),
    "before_rename": ("os.replace", 1, 400),
    "before_folder_fsync": ("os.fsync", 2, 500),
}
MANAGER_STAGES = {
    # name: (patched call, N, (last, best, newest periodic) steps after reopening)
    "before_write": ("torch.save", 1, (400, 400, 400)),
    "mid_write": ("write", 65536, (400, 400, 400)),
    "before_fsync": ("os.fsync", 1, (400, 400, 400)),
    "before_link_periodic": ("os.link", 1, (400, 400, 400)),
    "before_link_best": ("os.link", 2, (400, 400, 400)),
    "journal_before_rename": ("os.replace", 1, (400, 400, 400)),
    "journal_before_folder_fsync": ("os.fsync", 3, (400, 400, 400)),
    "before_rename_last": ("os.replace", 2, (400, 400, 400)),
    "before_rename_periodic": ("os.replace", 3, (500, 400, 400)),
    "before_rename_best": ("os.replace", 4, (500, 400, 500)),
    "renamed_before_folder_fsync": ("os.fsync", 4, (500, 500, 500)),
    "manifest_before_fsync": ("os.fsync", 5, (500, 500, 500)),
    "manifest_before_rename": ("os.replace", 5, (500, 500, 500)),
    "manifest_before_folder_fsync": ("os.fsync", 6, (500, 500, 500)),
    "before_rotation_delete": ("os.unlink", 1, (500, 500, 500)),
    "before_journal_delete": ("os.unlink", 2, (500, 500, 500)),
    "before_final_folder_fsync": ("os.fsync", 7, (500, 500, 500)),
}
MANAGER = {"keep_last": 2, "every_steps": 100}
NUMEL = 100_000  # 400 KB of weights, so "mid_write" stops well inside the file
LIMIT = 1 << 20  # RLIMIT_FSIZE for the full-disk jobs; their state is 4 MB


def good_manager_folder(folder: Path) -> None:
    manager = CheckpointManager(folder, **MANAGER)
    for step in (100, 200, 300, 400):
        manager.save(small_state(step, NUMEL), step=step, metrics={"val_loss": 1000 / step})


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """Runs every crash and full-disk job in one child process; returns (folders, results)."""
    root = tmp_path_factory.mktemp("crashes")
    jobs, folders = [], {}
    common = {"step": 500, "numel": NUMEL, "manager": MANAGER, "metrics": {"val_loss": 0.1}}
    for name, (target, n, _) in SAVE_STAGES.items():
        folders[f"save/{name}"] = folder = root / "save" / name
        save_checkpoint(folder / "model.pt", small_state(400, NUMEL))
        jobs.append(
            {**common, "name": f"save/{name}", "kind": "save", "path": str(folder / "model.pt")}
        )
        jobs[-1].update(target=target, n=n)
    for name, (target, n, _) in MANAGER_STAGES.items():
        folders[f"manager/{name}"] = folder = root / "manager" / name
        good_manager_folder(folder)
        jobs.append({**common, "name": f"manager/{name}", "kind": "manager", "path": str(folder)})
        jobs[-1].update(target=target, n=n)
    for kind in ("save", "manager"):
        folders[f"fsize/{kind}"] = folder = root / "fsize" / kind
        if kind == "save":
            save_checkpoint(folder / "model.pt", small_state(400, NUMEL))
        else:
            good_manager_folder(folder)
        path = folder / "model.pt" if kind == "save" else folder
        big = {**common, "numel": 4 * LIMIT // 4}
        jobs.append({**big, "name": f"fsize/{kind}", "kind": kind, "path": str(path)})
        jobs[-1].update(target="fsize", n=LIMIT)
    spec = root / "spec.json"
    spec.write_text(json.dumps({"jobs": jobs, "results": str(root / "results.json")}))
    subprocess.run([sys.executable, str(CHILD), str(spec)], check=True, timeout=180)
    for name in MANAGER_STAGES:  # untouched copies for the read-only tests: the others reopen
        folders[f"read_only/{name}"] = root / "read_only" / name
        shutil.copytree(folders[f"manager/{name}"], folders[f"read_only/{name}"])
    return folders, json.loads((root / "results.json").read_text())


@pytest.mark.parametrize("stage", SAVE_STAGES)
def test_sigkill_during_save_checkpoint(crashed, stage):
    folders, results = crashed
    folder, expected_step = folders[f"save/{stage}"], SAVE_STAGES[stage][2]
    assert results[f"save/{stage}"]["signal"] == signal.SIGKILL
    assert load_checkpoint(folder / "model.pt")["step"] == expected_step
    assert {p.name for p in folder.iterdir()} - set(temp_files(folder)) == {"model.pt"}


@pytest.mark.parametrize("stage", MANAGER_STAGES)
def test_sigkill_during_manager_save(crashed, stage):
    folders, results = crashed
    folder, (last, best, newest) = folders[f"manager/{stage}"], MANAGER_STAGES[stage][2]
    assert results[f"manager/{stage}"]["signal"] == signal.SIGKILL
    # No final name holds a partial file: every checkpoint there loads completely.
    on_disk = {p.stem: load_checkpoint(p)["step"] for p in folder.glob("*.pt")}
    assert on_disk["last"] in (400, 500)
    json.loads((folder / "manifest.json").read_text())

    manager = CheckpointManager(folder, **MANAGER)
    assert temp_files(folder) == [] and not (folder / "manifest.pending.json").exists()
    entries = manager.manifest["checkpoints"]
    assert {p.stem for p in folder.glob("*.pt")} == set(entries)
    for name, entry in entries.items():  # the manifest matches every file it lists
        assert manager.load(name)["step"] == entry["step"]
    periodic = sorted(entry["step"] for name, entry in entries.items() if name.startswith("step-"))
    assert (manager.last_step, manager.best_step, periodic) == (last, best, [newest - 100, newest])
    assert manager.best_metric == (0.1 if best == 500 else 2.5)

    manager.save(small_state(600), step=600, metrics={"val_loss": 0.01})
    reopened = CheckpointManager(folder, **MANAGER)
    assert (reopened.last_step, reopened.best_step) == (600, 600)
    assert {p.stem for p in folder.glob("*.pt")} == set(reopened.manifest["checkpoints"])


@pytest.mark.parametrize("kind", ["save", "manager"])
def test_file_size_limit_fails_cleanly(crashed, kind):
    folders, results = crashed
    folder, result = folders[f"fsize/{kind}"], results[f"fsize/{kind}"]
    assert result["exit"] == 0, result
    expected_path = folder / ("model.pt" if kind == "save" else "last.pt")
    assert f"could not write {expected_path}: file too large (EFBIG)" in result["error"]
    assert "RLIMIT_FSIZE" in result["error"]
    assert temp_files(folder) == []
    if kind == "save":
        assert load_checkpoint(folder / "model.pt")["step"] == 400
    else:
        assert not (folder / "manifest.pending.json").exists()
        manager = CheckpointManager(folder, **MANAGER)
        assert manager.last_step == 400 and manager.load("last")["step"] == 400


# ---------------------------------------------------------------------- export
class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 11, bias=False)
        self.head.weight = self.embed.weight  # weight tying, as in GPT-2
        self.register_buffer("window", torch.arange(12.0).view(3, 4)[:, 1:3])  # a strided view


class CharTokenizer:
    def __init__(self, chars: str) -> None:
        self.chars = chars

    def save(self, path: str) -> None:
        Path(path).write_text(json.dumps({"chars": self.chars}))


def test_export_round_trips_a_tied_model_without_pickle(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = TiedLM()
    config = {"vocab_size": 11, "d_model": 4, "tied": True}
    out = export_weights(model, tmp_path / "export", config=config, tokenizer=CharTokenizer("ab"))
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    raw = (out / "model.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert "head.weight" not in header and "embed.weight" in header  # stored once
    assert json.loads((out / "tokenizer.json").read_text()) == {"chars": "ab"}

    def no_unpickling(*args, **kwargs):
        raise AssertionError("load_weights must not unpickle")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr("pickle.load", no_unpickling)
    monkeypatch.setattr("pickle.loads", no_unpickling)
    state, loaded_config = load_weights(out)
    assert loaded_config == config
    fresh = TiedLM()
    fresh.load_state_dict(state)  # strict: every name, the tied alias included, is there
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    assert fresh.head.weight is fresh.embed.weight


def test_export_rejects_bad_inputs_before_writing(tmp_path):
    with pytest.raises(TypeError, match="config must be JSON-serialisable"):
        export_weights(nn.Linear(1, 1), tmp_path, config={"f": object()})
    with pytest.raises(TypeError, match="tokenizer must have a save"):
        export_weights(nn.Linear(1, 1), tmp_path, tokenizer="chars")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(CheckpointError, match="model.safetensors does not exist"):
        load_weights(tmp_path)


def test_run_folder_new_empty_or_hidden_only_is_accepted_and_not_created(tmp_path):
    new = tmp_path / "a" / "b"
    assert check_run_folder(new) == new and not (tmp_path / "a").exists()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".gitkeep").touch()  # hidden entries are no run
    assert check_run_folder(str(tmp_path / "empty")) == tmp_path / "empty"


def test_run_folder_with_an_earlier_run_needs_resume(tmp_path):
    for name in ("metrics.jsonl", "samples.txt", "tb", "checkpoints", "loss.png"):
        (tmp_path / name).mkdir()
    assert check_run_folder(tmp_path, resume=True) == tmp_path
    message = (
        f"--out-dir {tmp_path} holds an earlier run (checkpoints, loss.png, metrics.jsonl, "
        "samples.txt, ...): --resume continues it; to start a new run, name a new or empty folder"
    )
    with pytest.raises(ValueError) as refused:
        check_run_folder(tmp_path)
    assert str(refused.value) == message
    with pytest.raises(ValueError, match=r"^run_dir .*\): resume=True continues it; to start"):
        check_run_folder(tmp_path, flag="run_dir", resume_flag="resume=True")  # for a function


def test_run_folder_that_is_or_lies_under_a_file_is_refused_even_to_resume(tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("keep me")
    with pytest.raises(ValueError, match=r"--run .*notes.txt is a file, not a folder"):
        check_run_folder(file, resume=True, flag="--run")
    with pytest.raises(ValueError, match=r"notes.txt is a file, so no folder can be made under"):
        check_run_folder(file / "sub" / "run")
    link = tmp_path / "gone"
    link.symlink_to(tmp_path / "missing")
    with pytest.raises(ValueError, match="gone is a broken symbolic link"):
        check_run_folder(link)
    assert file.read_text() == "keep me"


def test_run_folder_without_write_permission_is_refused(tmp_path, monkeypatch):
    asked = []

    def no_write(path, mode):  # as for a user without write permission (tests may run as root)
        asked.append((Path(path), mode))
        return False

    monkeypatch.setattr(os, "access", no_write)
    with pytest.raises(ValueError, match=f"--out-dir {tmp_path}/run/x: this process may not"):
        check_run_folder(tmp_path / "run" / "x", resume=True)
    assert asked == [(tmp_path, os.W_OK | os.X_OK)]  # the nearest folder that exists


def test_run_folder_docstring_example_runs():
    import transformer_kit.checkpoint._folder as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0


def test_read_only_manager_reads_a_live_folder_without_touching_it(tmp_path):
    folder = tmp_path / "checkpoints"
    writer = CheckpointManager(folder, keep_last=5, every_steps=1, monitor="score", mode="max")
    for step in range(1, 6):
        writer.save({"step": step}, step=step, metrics={"score": float(step % 3)})
    (folder / "last.pt.tmp.abc123").write_bytes(b"a save in progress")  # another process's
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    reader = CheckpointManager(folder, read_only=True)  # default keep_last 3, monitor val_loss
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no rotation, no tidy
    assert (reader.monitor, reader.mode) == ("score", "max")  # the manifest's own
    assert reader.manifest == writer.manifest and reader.best_step == 2
    assert reader.load("last")["step"] == 5 and reader.load("step-00000001")["step"] == 1
    with pytest.raises(CheckpointError, match="was opened read_only"):
        reader.save({"step": 6}, step=6)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    # A manager opened for writing tidies and rotates: what read_only must not do.
    CheckpointManager(folder, keep_last=3, every_steps=1, monitor="score", mode="max")
    assert not (folder / "last.pt.tmp.abc123").exists()
    assert not (folder / "step-00000001.pt").exists()


def test_read_only_manager_refuses_a_missing_folder_or_a_file_and_creates_nothing(tmp_path):
    with pytest.raises(CheckpointError, match=r"nothing/checkpoints is not a checkpoint folder"):
        CheckpointManager(tmp_path / "nothing" / "checkpoints", read_only=True)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match=r"file is not a checkpoint folder \(a file\)"):
        CheckpointManager(tmp_path / "file", read_only=True)
    with pytest.raises(ValueError, match="read_only must be a bool, got 1"):
        CheckpointManager(tmp_path / "c", read_only=1)
    empty = CheckpointManager(tmp_path, read_only=True)  # a folder without a manifest yet
    assert empty.last_step is None and empty.load_latest_good() is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def crashed_copy(crashed, stage: str, tmp_path: Path) -> Path:
    """A copy of the folder that a SIGKILL at `stage` of a manager save left, for this test."""
    folders, results = crashed
    assert results[f"manager/{stage}"]["signal"] == signal.SIGKILL
    return Path(shutil.copytree(folders[f"read_only/{stage}"], tmp_path / "checkpoints"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("stage", MANAGER_STAGES)
def test_read_only_open_after_a_crash_sees_what_a_writing_open_recovers(crashed, stage, tmp_path):
    folder, last = crashed_copy(crashed, stage, tmp_path), MANAGER_STAGES[stage][2][0]
    before = snapshot(folder)

    reader = CheckpointManager(folder, read_only=True)
    assert (reader.last_step, reader.load("last")["step"]) == (last, last)
    for name, entry in reader.manifest["checkpoints"].items():  # each listed file verifies
        assert reader.load(name)["step"] == entry["step"]
    assert snapshot(folder) == before  # no unlink, rename or write: a journal is still there

    writer = CheckpointManager(folder, **MANAGER)  # recovers, deletes the journal, tidies
    assert not (folder / "manifest.pending.json").exists()
    seen, kept = reader.manifest, writer.manifest
    assert set(seen["checkpoints"]) - set(kept["checkpoints"]) <= {"step-00000300"}  # rotated
    assert kept == {**seen, "checkpoints": {n: seen["checkpoints"][n] for n in kept["checkpoints"]}}
    assert (writer.last_step, writer.load("last")["step"]) == (last, last)


def test_read_only_open_leaves_the_deletions_of_a_committed_save_to_its_writer(crashed, tmp_path):
    # Killed after the commit, before rotation deleted step-00000300.pt and the journal.
    folder = crashed_copy(crashed, "before_rotation_delete", tmp_path)
    journal = json.loads((folder / "manifest.pending.json").read_text())
    assert journal["manifest"] == json.loads((folder / "manifest.json").read_text())
    assert journal["remove"] == ["step-00000300.pt"] and (folder / "step-00000300.pt").exists()
    before = snapshot(folder)

    reader = CheckpointManager(folder, read_only=True)
    assert snapshot(folder) == before
    assert "step-00000300" not in reader.manifest["checkpoints"] and reader.last_step == 500
    CheckpointManager(folder, **MANAGER)
    assert not (folder / "step-00000300.pt").exists()


def test_read_only_open_ignores_an_unreadable_journal_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    committed = filled_manager(folder).manifest
    (folder / "manifest.pending.json").write_text('{"manifest": ')
    before = snapshot(folder)

    reader = CheckpointManager(folder, read_only=True)
    assert f"ignoring an unreadable journal: {folder}/manifest.pending.json" in caplog.text
    assert reader.manifest == committed and reader.load("last")["step"] == 450
    assert snapshot(folder) == before


def test_read_only_open_survives_a_save_that_commits_while_it_reads(crashed, tmp_path, caplog):
    # The journal vanishes as the reader comes to read it: the writer has just committed the
    # save. The reader must then read the new manifest, not pair the old one with new files.
    folder = crashed_copy(crashed, "manifest_before_rename", tmp_path)
    real_read_text, committing = Path.read_text, []

    def commit_first(path: Path, *args, **kwargs) -> str:
        if path.name == "manifest.pending.json" and not committing:
            committing.append(path)
            CheckpointManager(folder, **MANAGER)  # commits and deletes the journal
        return real_read_text(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "read_text", commit_first)
        reader = CheckpointManager(folder, read_only=True)
    assert committing and not (folder / "manifest.pending.json").exists()
    assert "unreadable journal" not in caplog.text  # a vanished journal is no journal
    assert (reader.last_step, reader.load("last")["step"]) == (500, 500)
    assert reader.manifest == CheckpointManager(folder, read_only=True).manifest

"""FSDP2 sharding and DCP checkpoints: 2-rank gloo equivalence and resume, crash-safe saves."""

from __future__ import annotations

import doctest
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from transformer_kit import fsdp
from transformer_kit.checkpoint import CheckpointError
from transformer_kit.fsdp import (
    consolidate_to_full_state_dict,
    load_sharded,
    save_sharded,
    shard_model,
    sharded_folders,
)
from transformer_kit.models import GPT, GPTConfig

HERE = Path(__file__).parent
CHILD = HERE / "_fsdp_child.py"
sys.path.insert(0, str(HERE))
import _fsdp_child as child  # noqa: E402


@pytest.fixture
def group(tmp_path):
    """A one-process gloo group in this process (FSDP2 and DCP work at world size 1)."""
    dist.init_process_group(
        "gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1
    )
    yield
    dist.destroy_process_group()


def tiny(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    settings = dict(vocab_size=32, block_size=16, n_layer=2, n_head=2, d_model=32)
    return GPT(GPTConfig(**{**settings, **overrides}))


def adam_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    inputs, targets = child.global_batch(step)
    model(inputs, targets).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def full(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in consolidate_to_full_state_dict(model).items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def sharded_with_adam(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = shard_model(tiny(seed))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


# ---------------------------------------------------------------- contract: errors
def test_shard_model_needs_a_process_group():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="shard_model needs an initialised process group"):
        shard_model(tiny())


def test_checkpoint_functions_need_a_process_group(tmp_path):
    model = tiny()
    with pytest.raises(RuntimeError, match="save_sharded needs an initialised process group"):
        save_sharded(tmp_path / "c", model, None)
    with pytest.raises(RuntimeError, match="load_sharded needs an initialised process group"):
        load_sharded(tmp_path / "c", model, None)
    assert not (tmp_path / "c").exists()


def test_shard_model_without_blocks_names_the_parameter(group):
    with pytest.raises(ValueError, match="blocks is None and Sequential has no iterable"):
        shard_model(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_shard_model_refuses_a_block_outside_the_model(group):
    model = tiny()
    with pytest.raises(ValueError, match=r"blocks\[1\] must be a submodule of the model"):
        shard_model(model, blocks=[model.blocks[0], torch.nn.Linear(2, 2)])


def test_shard_model_refuses_to_shard_twice(group):
    model = shard_model(tiny())
    with pytest.raises(ValueError, match="is already sharded"):
        shard_model(model)


def test_shard_model_shards_every_block_and_the_root(group):
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    model = shard_model(tiny())
    assert isinstance(model, FSDPModule)
    assert all(isinstance(block, FSDPModule) for block in model.blocks)
    assert all(isinstance(p, DTensor) for p in model.parameters())
    # The tied head stays tied: one parameter, sharded once.
    assert model.head.weight is model.tok_emb.weight


# ---------------------------------------------------------------- round trip, one process
def test_mixed_precision_leaves_the_rope_tables_in_float32(group):
    # FSDP2 casts a block's floating-point inputs to param_dtype; RoPE's angles must not be.
    from torch.distributed.fsdp import MixedPrecisionPolicy

    model = tiny(position="rope")
    seen = []
    model.blocks[0].attn.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((kwargs["rope"].cos.dtype, args[0].dtype)),
        with_kwargs=True,
    )
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    shard_model(model, mixed_precision=policy)
    model(torch.randint(0, 32, (1, 8)))
    assert seen == [(torch.float32, torch.bfloat16)]


def test_save_and_load_restore_weights_optimizer_and_extra(group, tmp_path):
    model, optimizer = sharded_with_adam()
    adam_step(model, optimizer, 0)
    path = save_sharded(tmp_path / "ckpt", model, optimizer, extra={"step": 1, "lr": [0.5]})
    assert path == tmp_path / "ckpt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "store"]

    fresh, fresh_optimizer = sharded_with_adam(seed=1)
    assert not torch.equal(full(fresh)["tok_emb.weight"], full(model)["tok_emb.weight"])
    extra = load_sharded(path, fresh, fresh_optimizer)
    assert extra == {"step": 1, "lr": [0.5]}
    assert_same(full(fresh), full(model))
    # Equal Adam moments give equal next steps; a lost optimizer state would not.
    adam_step(model, optimizer, 1)
    adam_step(fresh, fresh_optimizer, 1)
    assert_same(full(fresh), full(model))


def test_a_check_that_refuses_leaves_the_model_and_optimizer_as_they_were(group, tmp_path):
    model, optimizer = sharded_with_adam()
    adam_step(model, optimizer, 0)
    save_sharded(tmp_path / "ckpt", model, optimizer, extra={"step": 1})
    fresh, fresh_optimizer = sharded_with_adam(seed=1)
    before = full(fresh)
    seen = []

    def refuse(extra):
        seen.append(dict(extra))
        raise CheckpointError("not this run")

    with pytest.raises(CheckpointError, match="not this run"):
        load_sharded(tmp_path / "ckpt", fresh, fresh_optimizer, check=refuse)
    assert seen == [{"step": 1}]
    assert_same(full(fresh), before)
    assert not fresh_optimizer.state
    assert load_sharded(tmp_path / "ckpt", fresh, fresh_optimizer, check=seen.append) == {"step": 1}
    assert_same(full(fresh), full(model))


def test_saving_before_the_first_step_changes_nothing(group, tmp_path):
    # get_state_dict creates an empty optimizer's state with a zero-gradient step; left in
    # place, Adam's step count would be one ahead and every later update different.
    model, optimizer = sharded_with_adam()
    save_sharded(tmp_path / "ckpt", model, optimizer, extra={"step": 0})
    assert not optimizer.state
    fresh, fresh_optimizer = sharded_with_adam(seed=1)
    load_sharded(tmp_path / "ckpt", fresh, fresh_optimizer)
    assert not fresh_optimizer.state
    never_saved, never_saved_optimizer = sharded_with_adam()
    for run in [(model, optimizer), (fresh, fresh_optimizer), (never_saved, never_saved_optimizer)]:
        adam_step(*run, 0)
    assert_same(full(model), full(never_saved))
    assert_same(full(fresh), full(never_saved))


def test_model_only_checkpoint_loads_without_an_optimizer(group, tmp_path):
    model = shard_model(tiny())
    save_sharded(tmp_path / "ckpt", model, None)
    fresh = shard_model(tiny(seed=1))
    assert load_sharded(tmp_path / "ckpt", fresh, None) == {}
    assert_same(full(fresh), full(model))


def test_plain_model_round_trips_too(group, tmp_path):
    model = tiny()
    save_sharded(tmp_path / "ckpt", model, None, extra={"step": 3})
    fresh = tiny(seed=1)
    assert load_sharded(tmp_path / "ckpt", fresh, None) == {"step": 3}
    assert_same(fresh.state_dict(), model.state_dict())


def test_consolidated_state_matches_the_unsharded_model(group):
    plain = tiny()
    state = full(shard_model(tiny()))
    assert_same(state, plain.state_dict())
    assert all(v.device.type == "cpu" and not hasattr(v, "placements") for v in state.values())


def test_consolidate_without_a_process_group_is_the_plain_state():
    model = tiny()
    assert_same(consolidate_to_full_state_dict(model), model.state_dict())


def test_docstring_examples_run(group):
    # The examples name a sharded GPT with vocab_size=32 and d_model=64 `model`.
    model = shard_model(tiny(d_model=64))
    result = doctest.testmod(fsdp, extraglobs={"model": model, "tempfile": tempfile})
    assert result.attempted >= 7 and result.failed == 0


# ---------------------------------------------------------------- crash safety of the swap
def test_failed_save_leaves_the_previous_checkpoint(group, tmp_path, monkeypatch):
    model, optimizer = sharded_with_adam()
    save_sharded(tmp_path / "ckpt", model, optimizer, extra={"step": 0})
    before = sorted((tmp_path / "ckpt").iterdir())
    saved = full(model)
    adam_step(model, optimizer, 0)

    def crash(state, *, checkpoint_id):
        Path(checkpoint_id, "__0_0.distcp").write_bytes(b"half a shard")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dcp, "save", crash)
    with pytest.raises(CheckpointError, match="could not write .*ckpt.*No space left"):
        save_sharded(tmp_path / "ckpt", model, optimizer, extra={"step": 1})
    assert sorted((tmp_path / "ckpt").iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "store"]  # no .tmp left
    fresh, fresh_optimizer = sharded_with_adam(seed=1)
    assert load_sharded(tmp_path / "ckpt", fresh, fresh_optimizer) == {"step": 0}
    assert_same(full(fresh), saved)


def test_crash_between_the_two_renames_is_recovered(group, tmp_path):
    model, optimizer = sharded_with_adam()
    save_sharded(tmp_path / "ckpt", model, optimizer, extra={"step": 0})
    saved = full(model)
    # The state a crash leaves after the old checkpoint stepped aside and before the new one
    # was renamed in: `ckpt.old` (complete) and `ckpt.tmp` (complete or not), no `ckpt`.
    os.replace(tmp_path / "ckpt", tmp_path / "ckpt.old")
    (tmp_path / "ckpt.tmp").mkdir()
    fresh, fresh_optimizer = sharded_with_adam(seed=1)
    assert load_sharded(tmp_path / "ckpt", fresh, fresh_optimizer) == {"step": 0}
    assert_same(full(fresh), saved)

    adam_step(model, optimizer, 0)
    save_sharded(tmp_path / "ckpt", model, optimizer, extra={"step": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "store"]
    assert load_sharded(tmp_path / "ckpt", fresh, fresh_optimizer) == {"step": 1}
    assert_same(full(fresh), full(model))


def test_save_refuses_to_replace_a_folder_that_is_not_a_checkpoint(group, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="notes exists but holds no DCP checkpoint"):
        save_sharded(tmp_path / "notes", tiny(), None)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_extra_must_load_with_weights_only(group, tmp_path):
    with pytest.raises(ValueError, match="extra must load with torch.load"):
        save_sharded(tmp_path / "ckpt", tiny(), None, extra={"when": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_load_of_a_missing_checkpoint_names_it(group, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*nowhere"):
        load_sharded(tmp_path / "nowhere", tiny(), None)


def test_load_into_a_model_of_another_shape_names_the_directory(group, tmp_path):
    model, optimizer = sharded_with_adam()
    save_sharded(tmp_path / "ckpt", model, optimizer)
    other = shard_model(tiny(d_model=16))
    other_optimizer = torch.optim.AdamW(other.parameters())
    with pytest.raises(CheckpointError, match="ckpt does not fit this model"):
        load_sharded(tmp_path / "ckpt", other, other_optimizer)
    assert not other_optimizer.state  # left as it was, not half-initialised


def test_a_dcp_directory_from_elsewhere_loads_with_empty_extra(group, tmp_path):
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    model = shard_model(tiny())
    dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=tmp_path / "theirs")
    fresh = shard_model(tiny(seed=1))
    assert load_sharded(tmp_path / "theirs", fresh, None) == {}
    assert_same(full(fresh), full(model))


# ---------------------------------------------------------------- two gloo ranks
def launch(out: Path, mode: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(CHILD), "--out", str(out), "--mode", mode,
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        # One relaunch: once (2026-12-05) this launch failed inside a full-suite run and never
        # again in 10 runs of this file alone, its output lost. The first failure is now
        # reported as a warning, and a second one fails the tests with both outputs.
        first = done.stdout[-3000:] + done.stderr[-3000:]
        warnings.warn(
            f"torchrun {mode} failed once (exit {done.returncode}), relaunching:\n{first}",
            stacklevel=2,
        )
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (
            first + "\n--- relaunch ---\n" + done.stdout[-3000:] + done.stderr[-3000:]
        )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One straight 2-rank run (saving at step SAVE_AT) and one fresh 2-rank resumed run."""
    out = tmp_path_factory.mktemp("fsdp")
    launch(out, "straight")
    launch(out, "resume")
    return out


@pytest.mark.slow
def test_two_ranks_really_shard_the_parameters(runs):
    for rank in (0, 1):
        info = json.loads((runs / f"rank{rank}.json").read_text())
        assert info == {"local_rows": 16, "placements": "(Shard(dim=0),)"}  # 32 rows / 2


@pytest.mark.slow
def test_sharded_training_equals_a_single_process_run(runs):
    sharded = torch.load(runs / "sgd_full.pt", weights_only=True)
    reference = child.train_reference()
    initial = child.make_model().state_dict()
    assert sorted(sharded) == sorted(reference)
    for key, value in reference.items():
        torch.testing.assert_close(sharded[key], value, rtol=1e-4, atol=1e-6, msg=key)
    moved = max(float((reference[k] - initial[k]).abs().max()) for k in reference)
    assert moved > 1e-2  # the comparison is not between two untrained models


@pytest.mark.slow
def test_resumed_sharded_run_equals_the_uninterrupted_one(runs):
    straight = torch.load(runs / "adam_full.pt", weights_only=True)
    resumed = torch.load(runs / "adam_resumed.pt", weights_only=True)
    assert_same(resumed, straight)
    at_save = torch.load(runs / "adam_at_save.pt", weights_only=True)
    assert not torch.equal(at_save["tok_emb.weight"], straight["tok_emb.weight"])
    for rank in (0, 1):  # rank 0's extra reaches every rank
        extra = json.loads((runs / f"extra{rank}.json").read_text())
        assert extra == {"step": child.SAVE_AT, "rank": 0}
    assert sorted(p.name for p in runs.iterdir() if p.name.startswith("checkpoint")) == [
        "checkpoint"
    ]


@pytest.mark.slow
def test_a_two_rank_checkpoint_loads_into_one_process(runs, group):
    model, optimizer = sharded_with_adam(seed=1)
    extra = load_sharded(runs / "checkpoint", model, optimizer)
    assert extra["step"] == child.SAVE_AT
    assert_same(full(model), torch.load(runs / "adam_at_save.pt", weights_only=True))


def test_sharded_folders_names_the_checkpoint_and_the_backup_a_crash_leaves(tmp_path):
    final = tmp_path / "sharded-last"
    assert sharded_folders(final) == []
    (tmp_path / "sharded-last.old").mkdir()  # between a save's two renames
    assert sharded_folders(final) == [tmp_path / "sharded-last.old"]
    final.mkdir()
    assert sharded_folders(str(final)) == [final, tmp_path / "sharded-last.old"]
    (tmp_path / "sharded-last.tmp").mkdir()  # a save in progress holds no checkpoint yet
    assert len(sharded_folders(final)) == 2

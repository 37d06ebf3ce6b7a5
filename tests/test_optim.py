"""Tests for transformer_kit.optim: grouping, the three recipes, CombinedOptimizer, exact resume."""

from __future__ import annotations

import copy
import doctest
import pickle
import re
from pathlib import Path
from typing import get_args

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from transformer_kit import optim
from transformer_kit.models import GPT, GPTConfig
from transformer_kit.optim import (
    CombinedOptimizer,
    OptimizerName,
    build_optimizer,
    parameter_groups,
)

NAMES = get_args(OptimizerName)
# Learning rates that train the tiny GPT within 30 steps; Adafactor's lr caps a step *relative*
# to the parameter's RMS, so it needs a larger value (see docs/optim.md).
LR = {"adamw": 1e-2, "muon": 1e-2, "adafactor": 3e-2}


class TinyLM(nn.Module):
    """Embedding -> Linear(+bias) -> LayerNorm -> Linear(no bias) -> head, tied or not."""

    def __init__(self, *, tied: bool, vocab: int = 11, width: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.fc1 = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.fc2 = nn.Linear(width, width, bias=False)
        self.head = nn.Linear(width, vocab, bias=False)
        if tied:
            self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc2(self.norm(torch.relu(self.fc1(self.emb(ids))))))


pytestmark = pytest.mark.usefixtures("one_thread")


def _names(model: nn.Module, params: list[nn.Parameter]) -> set[str]:
    by_id = {id(p): name for name, p in model.named_parameters()}
    return {by_id[id(p)] for p in params}


def _ids(params) -> list[int]:
    return [id(p) for p in params]


def _gpt(*, tied: bool) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=32, block_size=16, n_layer=2, n_head=2, d_model=32, tie_weights=tied
    )
    return GPT(config)


def _build(model: GPT, name: str) -> torch.optim.Optimizer:
    return build_optimizer(model, name, lr=LR[name], exclude_from_muon=[model.head.weight])


def _batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    # Each row repeats its first 8 tokens, so the second half is learnable by copying.
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(count):
        half = torch.randint(1, 32, (4, 9), generator=generator)
        ids = torch.cat([half, half[:, :8]], dim=1)  # (4, 17)
        batches.append((ids[:, :-1], ids[:, 1:]))
    return batches


def _train(model: GPT, optimizer, scheduler, batches) -> list[float]:
    losses = []
    for inputs, targets in batches:
        loss = model(inputs, targets).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        losses.append(loss.item())
    return losses


def _warmup(step: int) -> float:
    return min(1.0, (step + 1) / 4)


# ---------------------------------------------------------------- parameter_groups
@pytest.mark.parametrize("tied", [True, False])
def test_parameter_groups_of_tiny_lm_by_name(tied):
    model = TinyLM(tied=tied)
    groups = parameter_groups(model, exclude=[model.head.weight])
    assert {role: _names(model, params) for role, params in groups.items()} == {
        "matrices": {"fc1.weight", "fc2.weight"},
        "excluded": set() if tied else {"head.weight"},
        "embeddings": {"emb.weight"},
        "other": {"fc1.bias", "norm.weight", "norm.bias"},
    }


def test_untied_head_without_exclude_is_a_matrix():
    model = TinyLM(tied=False)
    assert "head.weight" in _names(model, parameter_groups(model)["matrices"])


@pytest.mark.parametrize("tied", [True, False])
def test_every_trainable_parameter_of_gpt_lands_in_one_group_once(tied):
    model = _gpt(tied=tied)
    model.pos_emb.weight.requires_grad_(False)  # frozen parameters are left out
    groups = parameter_groups(model, exclude=[model.head.weight])
    placed = [id(p) for params in groups.values() for p in params]
    assert len(placed) == len(set(placed))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(placed) == trainable
    # Independent rule, by name: the blocks' 2-D weights are the hidden matrices.
    expected = {
        name for name, p in model.named_parameters() if name.startswith("blocks.") and p.dim() == 2
    }
    assert _names(model, groups["matrices"]) == expected
    assert _names(model, groups["embeddings"]) == {"tok_emb.weight"}
    assert _names(model, groups["excluded"]) == (set() if tied else {"head.weight"})
    assert all(p.dim() < 2 for p in groups["other"])


def test_parameter_groups_refuses_a_foreign_exclude():
    model = TinyLM(tied=False)
    with pytest.raises(ValueError, match="exclude must hold trainable parameters of model"):
        parameter_groups(model, exclude=[nn.Parameter(torch.zeros(2, 2))])


# ---------------------------------------------------------------- build_optimizer: groups
@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_decay_only_on_matrices(name):
    model = TinyLM(tied=False)
    optimizer = build_optimizer(
        model, name, lr=1e-3, weight_decay=0.3, exclude_from_muon=[model.head.weight]
    )
    decayed, plain = optimizer.param_groups
    assert (decayed["weight_decay"], plain["weight_decay"]) == (0.3, 0.0)
    assert _names(model, decayed["params"]) == {"fc1.weight", "fc2.weight", "head.weight"}
    assert _names(model, plain["params"]) == {"emb.weight", "fc1.bias", "norm.weight", "norm.bias"}


def test_adamw_first_step_matches_a_hand_computed_update():
    # Adam's first bias-corrected step is g / (|g| + eps); decoupled decay is p *= 1 - lr * wd.
    model = TinyLM(tied=True)
    lr, wd, eps = 0.1, 0.5, 1e-8
    optimizer = build_optimizer(model, "adamw", lr=lr, weight_decay=wd, betas=(0.8, 0.9))
    model(torch.tensor([[1, 2, 3]])).square().mean().backward()
    before = {name: (p.detach().clone(), p.grad.clone()) for name, p in model.named_parameters()}
    optimizer.step()
    for name, param in model.named_parameters():
        p0, grad = before[name]
        decay = wd if name in {"fc1.weight", "fc2.weight"} else 0.0
        expected = p0 * (1 - lr * decay) - lr * grad / (grad.abs() + eps)
        torch.testing.assert_close(param.detach(), expected, msg=name)
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.9)


def test_adamw_uses_the_fused_kernel_on_cpu_and_matches_the_per_tensor_loop():
    torch.manual_seed(0)
    fused_model = TinyLM(tied=False)
    loop_model = copy.deepcopy(fused_model)
    start = fused_model.fc1.weight.detach().clone()
    fused = build_optimizer(fused_model, "adamw", lr=0.05, weight_decay=0.3)
    assert fused.defaults["fused"] is True
    decayed, plain = (
        group["params"] for group in build_optimizer(loop_model, "adamw", lr=1).param_groups
    )
    loop = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": 0.3}, {"params": plain, "weight_decay": 0.0}],
        lr=0.05,
        betas=(0.9, 0.95),
        foreach=False,
    )
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    for step in range(6):
        if step == 3:  # the fused state loads into the loop optimizer: the same format
            loop.load_state_dict(copy.deepcopy(fused.state_dict()))
        for model, optimizer in ((fused_model, fused), (loop_model, loop)):
            optimizer.zero_grad()
            model(ids).square().mean().backward()
            optimizer.step()
        for (name, got), want in zip(
            fused_model.named_parameters(), loop_model.parameters(), strict=True
        ):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=name)
    assert (fused_model.fc1.weight - start).abs().mean() > 0.05  # six real steps were taken


def test_adamw_leaves_the_kernel_to_torch_where_fused_cannot_run():
    model = TinyLM(tied=False).to("meta")
    assert build_optimizer(model, "adamw", lr=1e-3).defaults["fused"] is None
    complex_model = TinyLM(tied=False)
    complex_model.phase = nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    assert build_optimizer(complex_model, "adamw", lr=1e-3).defaults["fused"] is None


@pytest.mark.parametrize("tied", [True, False])
def test_muon_gets_only_the_2d_hidden_matrices(tied):
    model = _gpt(tied=tied)
    optimizer = build_optimizer(model, "muon", lr=1e-3, exclude_from_muon=[model.head.weight])
    assert isinstance(optimizer, CombinedOptimizer)
    muon, adamw = optimizer.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    muon_params = [p for group in muon.param_groups for p in group["params"]]
    assert all(p.dim() == 2 for p in muon_params)
    assert _names(model, muon_params) == {
        name for name, p in model.named_parameters() if name.startswith("blocks.") and p.dim() == 2
    }
    assert all(group["adjust_lr_fn"] == "match_rms_adamw" for group in muon.param_groups)
    decayed, plain = adamw.param_groups
    assert _names(model, decayed["params"]) == (set() if tied else {"head.weight"})
    assert "tok_emb.weight" in _names(model, plain["params"]) and plain["weight_decay"] == 0.0
    placed = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(placed) == sorted(id(p) for p in model.parameters())


def test_muon_keeps_higher_dimensional_weights_with_adamw():
    model = nn.Sequential(nn.Linear(4, 4), nn.Conv1d(4, 4, 3))
    optimizer = build_optimizer(model, "muon", lr=1e-3)
    muon, adamw = optimizer.optimizers
    assert _ids(muon.param_groups[0]["params"]) == [id(model[0].weight)]
    assert _ids(adamw.param_groups[0]["params"]) == [id(model[1].weight)]


# ---------------------------------------------------------------- training and exact resume
@pytest.mark.parametrize("name", NAMES)
def test_each_recipe_reduces_the_loss(name):
    model = _gpt(tied=False)
    optimizer = _build(model, name)
    # One batch seen 30 times: memorising it is a task every recipe must manage.
    losses = _train(model, optimizer, LambdaLR(optimizer, lambda step: 1.0), _batches(1) * 30)
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("name", NAMES)
def test_resume_through_a_file_is_exact(name, tmp_path):
    batches = _batches(6)
    straight = _gpt(tied=False)
    optimizer = _build(straight, name)
    _train(straight, optimizer, LambdaLR(optimizer, _warmup), batches)

    first = _gpt(tied=False)
    optimizer = _build(first, name)
    scheduler = LambdaLR(optimizer, _warmup)
    _train(first, optimizer, scheduler, batches[:3])
    state = {
        "model": first.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }
    torch.save(state, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)

    def resume(load_optimizer: bool) -> GPT:
        model = _gpt(tied=False)
        model.load_state_dict(loaded["model"])
        optimizer = _build(model, name)
        scheduler = LambdaLR(optimizer, _warmup)
        if load_optimizer:
            optimizer.load_state_dict(loaded["optimizer"])
        scheduler.load_state_dict(loaded["scheduler"])
        _train(model, optimizer, scheduler, batches[3:])
        return model

    resumed, control = resume(True), resume(False)
    want = straight.state_dict()
    for key, got in resumed.state_dict().items():
        assert torch.equal(got, want[key]), key
    # Control: the optimizer state matters, so a fresh one must land elsewhere.
    assert not all(torch.equal(got, want[key]) for key, got in control.state_dict().items())


# ---------------------------------------------------------------- CombinedOptimizer
def _muon_tiny() -> tuple[TinyLM, CombinedOptimizer]:
    torch.manual_seed(0)
    model = TinyLM(tied=False)
    optimizer = build_optimizer(model, "muon", lr=0.1, exclude_from_muon=[model.head.weight])
    assert isinstance(optimizer, CombinedOptimizer)
    return model, optimizer


def _loss(model: TinyLM) -> torch.Tensor:
    return model(torch.tensor([[1, 2, 3, 4]])).logsumexp(-1).mean()


def test_param_groups_are_the_childrens_dicts():
    _, optimizer = _muon_tiny()
    children = [group for child in optimizer.optimizers for group in child.param_groups]
    assert len(optimizer.param_groups) == 3
    assert all(a is b for a, b in zip(optimizer.param_groups, children, strict=True))


def test_lambda_lr_drives_every_child_group_also_after_loading():
    model, optimizer = _muon_tiny()
    scheduler = LambdaLR(optimizer, lambda step: 0.5**step)
    for step in range(1, 4):
        _loss(model).backward()
        optimizer.step()
        scheduler.step()
        lrs = [group["lr"] for child in optimizer.optimizers for group in child.param_groups]
        assert lrs == [0.1 * 0.5**step] * 3
    optimizer.load_state_dict(optimizer.state_dict())  # the children get new group dicts
    scheduler.step()
    lrs = [group["lr"] for child in optimizer.optimizers for group in child.param_groups]
    assert lrs == [0.1 * 0.5**4] * 3


def test_step_and_zero_grad_reach_every_child():
    model, optimizer = _muon_tiny()
    before = [p.detach().clone() for p in model.parameters()]
    loss = optimizer.step(lambda: _loss(model).backward() or 1.5)
    assert loss == 1.5
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert len(optimizer.state) == len(before)
    muon_param = optimizer.optimizers[0].param_groups[0]["params"][0]
    assert optimizer.state[muon_param] is optimizer.optimizers[0].state[muon_param]
    optimizer.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_clip_grad_norm_over_combined_groups_matches_an_independent_norm():
    model, optimizer = _muon_tiny()
    _loss(model).backward()
    expected = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    total = torch.nn.utils.clip_grad_norm_(params, max_norm=1e-3)
    torch.testing.assert_close(total, expected)
    clipped = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    torch.testing.assert_close(clipped, torch.tensor(1e-3), rtol=1e-4, atol=0.0)


def test_grad_scaler_unscales_every_child_group():
    model, optimizer = _muon_tiny()
    _loss(model).backward()
    plain = [p.grad.clone() for p in model.parameters()]
    optimizer.zero_grad()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(_loss(model)).backward()
    scaler.unscale_(optimizer)
    for want, param in zip(plain, model.parameters(), strict=True):
        torch.testing.assert_close(param.grad, want)
    before = [p.detach().clone() for p in model.parameters()]
    scaler.step(optimizer)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o))])
def test_copies_keep_a_working_combination(clone):
    model, optimizer = _muon_tiny()
    _loss(model).backward()
    optimizer.step()
    copied = clone(optimizer)
    assert [type(child) for child in copied.optimizers] == [torch.optim.Muon, torch.optim.AdamW]
    assert copied.param_groups[0] is copied.optimizers[0].param_groups[0]
    assert len(copied.state) == len(optimizer.state)


def test_load_state_dict_refuses_another_recipe_and_leaves_state_untouched():
    model, optimizer = _muon_tiny()
    _loss(model).backward()
    optimizer.step()
    saved = copy.deepcopy(optimizer.state_dict())
    adamw_state = build_optimizer(model, "adamw", lr=0.1).state_dict()
    with pytest.raises(ValueError, match=r"state_dict\['optimizers'\] must list 2"):
        optimizer.load_state_dict(adamw_state)
    wrong = {"optimizers": [saved["optimizers"][0], saved["optimizers"][0]]}
    with pytest.raises(ValueError, match=r"optimizers\[1\] \(AdamW\) has groups of sizes"):
        optimizer.load_state_dict(wrong)
    after = optimizer.state_dict()["optimizers"][0]["state"]
    assert all(
        torch.equal(after[key]["momentum_buffer"], value["momentum_buffer"])
        for key, value in saved["optimizers"][0]["state"].items()
    )


def test_combined_optimizer_errors():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    with pytest.raises(ValueError, match="optimizers must not be empty"):
        CombinedOptimizer([])
    with pytest.raises(TypeError, match=r"optimizers\[0\] must be a torch.optim.Optimizer"):
        CombinedOptimizer([object()])  # type: ignore[list-item]
    shared = [torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(a.parameters(), lr=0.1)]
    with pytest.raises(ValueError, match="more than one parameter group"):
        CombinedOptimizer(shared)
    combined = CombinedOptimizer([torch.optim.SGD(a.parameters(), lr=0.1)])
    with pytest.raises(TypeError, match="add the group to one of the child optimizers"):
        combined.add_param_group({"params": list(b.parameters())})


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "sgd"}, r"name must be one of \('adamw', 'muon', 'adafactor'\), got 'sgd'"),
        ({"lr": 0.0}, "lr must be a finite number > 0, got 0.0"),
        ({"lr": float("nan")}, "lr must be a finite number > 0, got nan"),
        ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0, got -0.1"),
        ({"betas": (0.9, 1.0)}, r"betas must be two numbers in \[0, 1\), got \(0.9, 1.0\)"),
    ],
)
def test_build_optimizer_names_the_bad_argument(kwargs, match):
    arguments = {"name": "adamw", "lr": 1e-3, **kwargs}
    with pytest.raises(ValueError, match=match):
        build_optimizer(TinyLM(tied=True), **arguments)


def test_muon_without_hidden_matrices_is_refused():
    model = nn.Sequential(nn.Embedding(5, 4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match="name='muon' needs at least one 2-D hidden matrix"):
        build_optimizer(model, "muon", lr=1e-3)


def test_model_without_trainable_parameters_is_refused():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="model has no trainable parameters"):
        build_optimizer(model, lr=1e-3)


# ---------------------------------------------------------------- documentation
def test_docstring_examples_run():
    result = doctest.testmod(optim)
    assert result.attempted > 0 and result.failed == 0


def test_docs_example_runs(capsys):
    page = Path(__file__).resolve().parents[1] / "docs" / "optim.md"
    code = re.search(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)
    assert code is not None
    exec(compile(code.group(1), str(page), "exec"), {})
    assert capsys.readouterr().out.strip() == (
        "{'matrices': 8, 'excluded': 1, 'embeddings': 2, 'other': 18}"
    )

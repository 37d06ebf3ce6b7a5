"""Optimizer recipes chosen by name, each built from PyTorch's own optimizers.

`parameter_groups` sorts a model's trainable parameters by role (hidden matrices, embeddings, the
rest), and `build_optimizer` turns that split into one optimizer: "adamw" (the default), "muon"
(`torch.optim.Muon` on the hidden matrices, AdamW on everything else, joined by
`CombinedOptimizer`) or "adafactor" (factored second moments, for memory). Each returns a single
`torch.optim.Optimizer`, so one `LambdaLR` and one `state_dict()` cover the whole recipe.
    >>> model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8))
    >>> {role: len(params) for role, params in parameter_groups(model).items()}
    {'matrices': 1, 'excluded': 0, 'embeddings': 1, 'other': 1}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, get_args, overload

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

__all__ = ["CombinedOptimizer", "OptimizerName", "build_optimizer", "parameter_groups"]

OptimizerName = Literal["adamw", "muon", "adafactor"]

# Muon's momentum and Nesterov setting are torch's defaults, which are those of Keller Jordan's
# reference implementation (https://kellerjordan.github.io/posts/muon/).
_MUON_MOMENTUM = 0.95


def parameter_groups(
    model: nn.Module, *, exclude: Sequence[nn.Parameter] = ()
) -> dict[str, list[nn.Parameter]]:
    """Split the trainable parameters of `model` by the role they play in optimization.

    Each trainable tensor lands in exactly one group, once, even when modules share it (a tied
    output head is the embedding's own `Parameter`, so it is an embedding). Groups keep the order
    of `model.named_parameters()`, so the split is the same on every run.

    - "matrices": weights with >= 2 dimensions that are neither embeddings nor in `exclude`:
      the hidden layers, which get weight decay and, under "muon", Muon.
    - "excluded": weights with >= 2 dimensions listed in `exclude`, typically the untied output
      head (`model.head.weight` in the kit's GPT): decayed like matrices but kept away from Muon.
    - "embeddings": the weights of every `nn.Embedding` module, and any parameter tied to one.
    - "other": everything with fewer than 2 dimensions (norm gains, biases).

    Args:
        model: The model whose parameters to split; frozen parameters are left out.
        exclude: Parameters of `model` to keep out of "matrices". Passing a tied head is harmless:
            it is the embedding's weight and stays in "embeddings".

    Returns:
        The four groups, keyed "matrices", "excluded", "embeddings", "other"; a group may be empty.

    Raises:
        ValueError: if `exclude` holds a tensor that is not a trainable parameter of `model`.

    Example:
        >>> lm = nn.ModuleDict({"emb": nn.Embedding(10, 8), "head": nn.Linear(8, 10)})
        >>> groups = parameter_groups(lm, exclude=[lm["head"].weight])
        >>> [len(groups[role]) for role in ("matrices", "excluded", "embeddings", "other")]
        [0, 1, 1, 1]
    """
    trainable = [param for _, param in model.named_parameters() if param.requires_grad]
    trainable_ids = {id(param) for param in trainable}
    excluded_ids = {id(param) for param in exclude}
    if not excluded_ids <= trainable_ids:
        raise ValueError(
            "parameter_groups: exclude must hold trainable parameters of model, got "
            f"{len(excluded_ids - trainable_ids)} tensor(s) that are not"
        )
    embedding_ids = {
        id(module.weight) for module in model.modules() if isinstance(module, nn.Embedding)
    }
    groups: dict[str, list[nn.Parameter]] = {
        "matrices": [],
        "excluded": [],
        "embeddings": [],
        "other": [],
    }
    for param in trainable:
        if id(param) in embedding_ids:
            groups["embeddings"].append(param)
        elif param.dim() < 2:
            groups["other"].append(param)
        elif id(param) in excluded_ids:
            groups["excluded"].append(param)
        else:
            groups["matrices"].append(param)
    return groups


class _StateView(Mapping[Tensor, Any]):
    """Read-only union of the children's per-parameter state; live, never a copy."""

    def __init__(self, optimizers: Sequence[Optimizer]) -> None:
        self._optimizers = optimizers

    def __getitem__(self, param: Tensor) -> Any:
        for optimizer in self._optimizers:
            # `in` first: the children's state is a defaultdict that would grow on a lookup.
            if param in optimizer.state:
                return optimizer.state[param]
        raise KeyError(param)

    def __iter__(self) -> Iterator[Tensor]:
        for optimizer in self._optimizers:
            yield from optimizer.state

    def __len__(self) -> int:
        return sum(len(optimizer.state) for optimizer in self._optimizers)


class CombinedOptimizer(Optimizer):
    """Several optimizers over disjoint parameters, stepped, scheduled and saved as one.

    `param_groups` is the concatenation of the children's group dicts (the same dict objects),
    so a scheduler that sets `group["lr"]` sets it in the child, and `GradScaler.unscale_` sees
    every parameter. `state` is a read-only view of the children's state.

    Args:
        optimizers: The child optimizers; no parameter may appear in two of them. Add every
            parameter group before combining: `add_param_group` is refused afterwards.

    Raises:
        ValueError: if `optimizers` is empty or two children share a parameter.
        TypeError: if a child is not a `torch.optim.Optimizer`.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
        >>> muon = torch.optim.Muon([net[0].weight], lr=0.02, adjust_lr_fn="match_rms_adamw")
        >>> rest = torch.optim.AdamW([net[0].bias, *net[1].parameters()], lr=0.02)
        >>> optimizer = CombinedOptimizer([muon, rest])
        >>> len(optimizer.param_groups), list(optimizer.state_dict())
        (2, ['optimizers'])
    """

    def __init__(self, optimizers: Sequence[Optimizer]) -> None:
        """Register the children's parameter groups as this optimizer's own."""
        if len(optimizers) == 0:
            raise ValueError("CombinedOptimizer: optimizers must not be empty")
        for index, child in enumerate(optimizers):
            if not isinstance(child, Optimizer):
                raise TypeError(
                    f"CombinedOptimizer: optimizers[{index}] must be a torch.optim.Optimizer, "
                    f"got {type(child).__name__}"
                )
        self.optimizers = list(optimizers)
        self._combined = False
        # Optimizer.__init__ registers the children's own group dicts (not copies), refuses a
        # parameter found in two groups, and installs the step hooks that LRScheduler relies on.
        super().__init__([group for child in self.optimizers for group in child.param_groups], {})
        # The base class made an empty defaultdict; the children hold the real state.
        self.state = _StateView(self.optimizers)  # type: ignore[assignment]
        self._combined = True

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Register a child's group while combining; refused afterwards (no child would own it).

        Raises:
            TypeError: when called after construction.
        """
        if self._combined:
            raise TypeError(
                "CombinedOptimizer.add_param_group: add the group to one of the child optimizers "
                "before combining them"
            )
        super().add_param_group(param_group)

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Step every child once; `closure`, if given, is evaluated once, before the children."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for child in self.optimizers:
            child.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of every child's parameters."""
        for child in self.optimizers:
            child.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """Return `{"optimizers": [child.state_dict(), ...]}`; it loads with weights_only=True."""
        return {"optimizers": [child.state_dict() for child in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a `state_dict()` of a combination of the same optimizers over the same groups.

        Raises:
            ValueError: if the saved state has another number of children, groups or group sizes
                (a checkpoint written with another optimizer recipe or another model).
        """
        saved = state_dict.get("optimizers") if isinstance(state_dict, Mapping) else None
        if not isinstance(saved, (list, tuple)) or len(saved) != len(self.optimizers):
            found = f"{len(saved)} entries" if isinstance(saved, (list, tuple)) else "no list"
            raise ValueError(
                "CombinedOptimizer.load_state_dict: state_dict['optimizers'] must list "
                f"{len(self.optimizers)} child states ({self._names()}), found {found}; was it "
                "saved with another optimizer recipe?"
            )
        # Check every child before loading any, so a mismatch leaves the state untouched.
        for index, (child, child_state) in enumerate(zip(self.optimizers, saved, strict=True)):
            expected = [len(group["params"]) for group in child.param_groups]
            groups = child_state.get("param_groups", []) if isinstance(child_state, Mapping) else []
            found_sizes = [len(group.get("params", ())) for group in groups]
            if found_sizes != expected:
                raise ValueError(
                    f"CombinedOptimizer.load_state_dict: optimizers[{index}] "
                    f"({type(child).__name__}) has groups of sizes {expected}, the saved state "
                    f"{found_sizes}; was it saved with another optimizer recipe or model?"
                )
        for child, child_state in zip(self.optimizers, saved, strict=True):
            child.load_state_dict(child_state)
        # Loading replaces the children's group dicts; point ours at the new ones, in place.
        self.param_groups[:] = [group for child in self.optimizers for group in child.param_groups]

    def __getstate__(self) -> dict[str, Any]:
        """Add the children to what the base class pickles, so copies work (deepcopy, pickle)."""
        return {**super().__getstate__(), "optimizers": self.optimizers, "_combined": True}

    def __repr__(self) -> str:
        """Show each child's own repr, indented."""
        children = ",\n".join(f"  {child!r}".replace("\n", "\n  ") for child in self.optimizers)
        return f"{type(self).__name__}(\n{children}\n)"

    def _names(self) -> str:
        return ", ".join(type(child).__name__ for child in self.optimizers)


def build_optimizer(
    model: nn.Module,
    name: OptimizerName = "adamw",
    *,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    exclude_from_muon: Sequence[nn.Parameter] = (),
) -> Optimizer:
    """Build the optimizer recipe `name` over the trainable parameters of `model`.

    Weight decay goes to the "matrices" and "excluded" groups of `parameter_groups` only, never
    to embeddings, norm gains or biases. The recipes:

    - "adamw": `torch.optim.AdamW` with two groups, decayed matrices then the rest.
    - "muon": `torch.optim.Muon` (momentum 0.95, Nesterov) on the 2-D "matrices", and AdamW on
      everything else (embeddings, the excluded head, norms, biases, and matrices with more than
      2 dimensions), joined in a `CombinedOptimizer` whose first child is Muon.
    - "adafactor": `torch.optim.Adafactor` with the two groups of "adamw"; `betas` do not apply
      (Adafactor has no first moment and a step-dependent second-moment decay), and torch uses
      `lr` as the cap of the *relative* step size, so it wants a larger value (around 1e-2).

    Args:
        model: The model to optimize; frozen parameters are left out.
        name: The recipe.
        lr: Peak learning rate, shared by every group (a scheduler then scales it).
        weight_decay: Decoupled weight decay of the matrices; every recipe applies it as
            `param *= 1 - lr * weight_decay` per step.
        betas: AdamW's moment decays, used by "adamw" and by the AdamW half of "muon".
        exclude_from_muon: Matrices to give to AdamW instead of Muon, typically the output
            head; for the kit's GPT pass `[model.head.weight]` (tied, it is an embedding anyway).

    Returns:
        One optimizer; for "muon" a `CombinedOptimizer` of `[Muon, AdamW]`.

    Raises:
        ValueError: on an unknown `name`, a non-positive `lr`, a negative `weight_decay`, `betas`
            outside [0, 1), a model without trainable parameters, or "muon" on a model without
            2-D hidden matrices.

    Example:
        >>> net = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.LayerNorm(8))
        >>> optimizer = build_optimizer(net, "muon", lr=1e-3)
        >>> [type(child).__name__ for child in optimizer.optimizers]
        ['Muon', 'AdamW']
    """
    _check_args(name, lr, weight_decay, betas)
    groups = parameter_groups(model, exclude=exclude_from_muon)
    if not any(groups.values()):
        raise ValueError("build_optimizer: model has no trainable parameters")
    decayed = groups["matrices"] + groups["excluded"]
    not_decayed = groups["embeddings"] + groups["other"]
    if name == "adafactor":
        return torch.optim.Adafactor(
            [
                {"params": decayed, "weight_decay": weight_decay},
                {"params": not_decayed, "weight_decay": 0.0},
            ],
            lr=lr,
        )
    if name == "adamw":
        return _adamw(decayed, not_decayed, lr=lr, weight_decay=weight_decay, betas=betas)
    # Muon orthogonalises a 2-D update; higher-dimensional weights stay with AdamW.
    hidden = [param for param in groups["matrices"] if param.dim() == 2]
    if not hidden:
        raise ValueError(
            "build_optimizer: name='muon' needs at least one 2-D hidden matrix (not an embedding "
            "or in exclude_from_muon); this model has none, use 'adamw'"
        )
    hidden_ids = {id(param) for param in hidden}
    rest_decayed = [param for param in decayed if id(param) not in hidden_ids]
    # "match_rms_adamw" scales Muon's lr by 0.2 * sqrt(max(rows, cols)) so the update's RMS
    # matches AdamW's, letting both halves share lr and weight decay: Liu et al. 2025, "Muon is
    # Scalable for LLM Training" (arXiv:2502.16982), as implemented in torch/optim/_muon.py
    # `_adjust_lr`. The default ("original") keeps Muon's own scale (0.02 in Keller Jordan's
    # post), far above AdamW's, so the two halves would need two learning rates.
    muon = torch.optim.Muon(
        hidden,
        lr=lr,
        weight_decay=weight_decay,
        momentum=_MUON_MOMENTUM,
        nesterov=True,
        adjust_lr_fn="match_rms_adamw",
    )
    adamw = _adamw(rest_decayed, not_decayed, lr=lr, weight_decay=weight_decay, betas=betas)
    return CombinedOptimizer([muon, adamw])


def _adamw(
    decayed: list[nn.Parameter],
    not_decayed: list[nn.Parameter],
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
) -> torch.optim.AdamW:
    # Both groups always exist, even when empty, so the state_dict layout depends only on the
    # recipe and a checkpoint loads into any model of the same architecture.
    return torch.optim.AdamW(
        [
            {"params": decayed, "weight_decay": weight_decay},
            {"params": not_decayed, "weight_decay": 0.0},
        ],
        lr=lr,
        betas=betas,
        fused=_fusable(decayed + not_decayed),
    )


def _fusable(params: list[nn.Parameter]) -> bool | None:
    """True when torch's fused AdamW takes every parameter, else None (torch's own choice).

    The fused kernel updates all tensors of a device and dtype in one call per step, instead of
    about ten small ops per tensor; on CPU torch does not pick it by itself. For the 0.8M
    benchmark model it cut the optimizer step from about 8 ms to 3 ms at 1 thread (4 ms to 1 ms
    at 2), measured side by side (docs/benchmarks.md).
    It keeps AdamW's state_dict format, so checkpoints move between the two. Plain CPU and CUDA
    floating-point tensors only: sharded (DTensor) and other parameters keep the default.
    """
    fusable = all(
        type(param.data) is Tensor
        and param.device.type in ("cpu", "cuda")
        and param.is_floating_point()
        for param in params
    )
    return True if params and fusable else None


def _check_args(name: str, lr: float, weight_decay: float, betas: tuple[float, float]) -> None:
    allowed = get_args(OptimizerName)
    if name not in allowed:
        raise ValueError(f"build_optimizer: name must be one of {allowed}, got {name!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"build_optimizer: lr must be a finite number > 0, got {lr!r}")
    if not (isinstance(weight_decay, (int, float)) and 0 <= weight_decay < math.inf):
        raise ValueError(
            f"build_optimizer: weight_decay must be a finite number >= 0, got {weight_decay!r}"
        )
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise ValueError(f"build_optimizer: betas must be two numbers in [0, 1), got {betas!r}")

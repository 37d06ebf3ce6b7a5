"""Learning-rate schedules: pure functions of the step that return a multiplier in [0, 1].

Each schedule maps an optimizer step (counted from 0) to a factor of the base learning rate; the
step is the only state, so resuming a run only needs the step. `lambda_lr` wraps any schedule as a
`torch.optim.lr_scheduler.LambdaLR`, and `lr_finder` sweeps learning rates to suggest one.

    >>> warmup_cosine(10, warmup_steps=10, total_steps=100)
    1.0
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from transformer_kit._numbers import _check_int, _check_real

__all__ = [
    "LRFinderResult",
    "constant_with_warmup",
    "inverse_sqrt",
    "lambda_lr",
    "lr_finder",
    "warmup_cosine",
    "warmup_linear",
]


# The schedules run at every optimizer step: the checks (`_numbers`) take plain ints and floats
# first.


def _check_warmup(name: str, step: object, warmup_steps: object) -> tuple[int, int]:
    if type(step) is int and type(warmup_steps) is int and step >= 0 and warmup_steps >= 0:
        return step, warmup_steps  # the usual case, without the calls below
    return _check_int(name, "step", step, 0), _check_int(name, "warmup_steps", warmup_steps, 0)


def _check_decay(
    name: str, step: object, warmup_steps: object, total_steps: object, min_ratio: object
) -> tuple[int, int, int, float]:
    if (
        type(step) is int
        and type(warmup_steps) is int
        and type(total_steps) is int
        and type(min_ratio) is float
        and step >= 0
        and 0 <= warmup_steps <= total_steps
        and total_steps >= 1
        and 0.0 <= min_ratio <= 1.0
    ):
        return step, warmup_steps, total_steps, min_ratio  # the usual case, checked in one go
    step, warmup = _check_warmup(name, step, warmup_steps)
    total = _check_int(name, "total_steps", total_steps, 1)
    if total < warmup:
        raise ValueError(
            f"{name}: total_steps must be >= warmup_steps ({warmup}), got {total_steps!r}"
        )
    ratio = _check_real(name, "min_ratio", min_ratio, "a number in [0, 1]", _in_unit_interval)
    return step, warmup, total, ratio


def _in_unit_interval(x: float) -> bool:
    return 0.0 <= x <= 1.0


def warmup_cosine(
    step: int, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
) -> float:
    """Linear warmup from 0, then a half-cosine from 1 down to `min_ratio`.

    The multiplier is `step / warmup_steps` while `step < warmup_steps`, exactly 1.0 at
    `warmup_steps`, follows `min_ratio + (1 - min_ratio) * (1 + cos(pi * progress)) / 2` with
    `progress = (step - warmup_steps) / (total_steps - warmup_steps)`, and is `min_ratio` from
    `total_steps` on. With `total_steps == warmup_steps` there is no decay phase: the multiplier
    drops straight to `min_ratio` once warmup ends.

    Args:
        step: Optimizer step, counted from 0: an int >= 0.
        warmup_steps: Length of the linear warmup, an int >= 0; 0 means none (1.0 at step 0).
        total_steps: Step at which the decay reaches `min_ratio`: an int >= 1 and at least
            `warmup_steps`.
        min_ratio: Floor of the multiplier, in [0, 1].

    Raises:
        ValueError: If `step` or `warmup_steps` is not an int >= 0, `total_steps` is not an int
            >= 1 and >= `warmup_steps`, or `min_ratio` is not a number in [0, 1] (bools, NaN
            and infinities are refused; NumPy ints and floats are fine).

    Example:
        >>> warmup_cosine(55, warmup_steps=10, total_steps=100)
        0.5
    """
    step, warmup_steps, total_steps, min_ratio = _check_decay(
        "warmup_cosine", step, warmup_steps, total_steps, min_ratio
    )
    if step < warmup_steps:
        return step / warmup_steps
    if step >= total_steps:
        return min_ratio
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    # The clamp absorbs the one-ulp overshoot of m + (1 - m) * 1.0 for some m.
    return min(1.0, min_ratio + (1.0 - min_ratio) * cosine)


def warmup_linear(
    step: int, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
) -> float:
    """Linear warmup from 0, then a straight line from 1 down to `min_ratio` at `total_steps`.

    Same conventions as `warmup_cosine` (warmup, `total_steps == warmup_steps`, the floor after
    `total_steps`), with the cosine replaced by `1 - progress`.

    Raises:
        ValueError: If `step` or `warmup_steps` is not an int >= 0, `total_steps` is not an int
            >= 1 and >= `warmup_steps`, or `min_ratio` is not a number in [0, 1] (bools, NaN
            and infinities are refused; NumPy ints and floats are fine).

    Example:
        >>> warmup_linear(55, warmup_steps=10, total_steps=100)
        0.5
    """
    step, warmup_steps, total_steps, min_ratio = _check_decay(
        "warmup_linear", step, warmup_steps, total_steps, min_ratio
    )
    if step < warmup_steps:
        return step / warmup_steps
    if step >= total_steps:
        return min_ratio
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min(1.0, min_ratio + (1.0 - min_ratio) * (1.0 - progress))


def constant_with_warmup(step: int, *, warmup_steps: int) -> float:
    """Linear warmup from 0 to 1 over `warmup_steps`, then 1.0 for ever.

    Raises:
        ValueError: If `step` or `warmup_steps` is not an int >= 0 (bools are refused).

    Example:
        >>> constant_with_warmup(5, warmup_steps=10)
        0.5
    """
    step, warmup_steps = _check_warmup("constant_with_warmup", step, warmup_steps)
    if step < warmup_steps:
        return step / warmup_steps
    return 1.0


def inverse_sqrt(step: int, *, warmup_steps: int) -> float:
    """Linear warmup, then decay as `sqrt(warmup_steps / step)` (Vaswani et al., 2017, eq. 3).

    The multiplier is 1.0 at `warmup_steps` and falls as one over the square root of the step.
    With `warmup_steps=0` it is `1 / sqrt(max(step, 1))`: 1.0 at steps 0 and 1, then the decay.

    Raises:
        ValueError: If `step` or `warmup_steps` is not an int >= 0 (bools are refused).

    Example:
        >>> inverse_sqrt(400, warmup_steps=100)
        0.5
    """
    step, warmup_steps = _check_warmup("inverse_sqrt", step, warmup_steps)
    if step < warmup_steps:
        return step / warmup_steps
    if warmup_steps == 0:
        return 1.0 / math.sqrt(max(step, 1))
    return math.sqrt(warmup_steps / step)


def lambda_lr(optimizer: Optimizer, fn: Callable[..., float], **kwargs: Any) -> LambdaLR:
    """Wrap schedule `fn` with its keyword arguments as a `LambdaLR` over `optimizer`.

    Each param group's learning rate becomes `initial_lr * fn(step, **kwargs)`. The scheduler
    evaluates the schedule at step 0 on construction, so bad keyword arguments raise here.

    Raises:
        TypeError: If `fn` is not callable.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> sched = lambda_lr(opt, warmup_cosine, warmup_steps=10, total_steps=100)
        >>> opt.param_groups[0]["lr"]
        0.0
    """
    if not callable(fn):
        raise TypeError(f"lambda_lr: fn must be a callable schedule, got {fn!r}")
    return LambdaLR(optimizer, partial(fn, **kwargs))


@dataclass(frozen=True, slots=True)
class LRFinderResult:
    """Outcome of `lr_finder`: the learning rates tried and the smoothed loss at each."""

    lrs: list[float]
    """Learning rates in the order tried (a geometric sequence from `start_lr`)."""
    losses: list[float]
    """Bias-corrected exponential moving average of the loss after each step."""
    suggested_lr: float
    """The learning rate where the smoothed loss falls fastest against log(lr)."""


def _default_loss(model: nn.Module, batch: Any) -> Tensor:
    output = model(*batch) if isinstance(batch, (tuple, list)) else model(batch)
    return getattr(output, "loss", output)


def _cycle(batches: Iterable[Any]) -> Iterator[Any]:
    if iter(batches) is batches:
        # A one-shot iterator cannot be restarted, so cycle over what it has yielded.
        yield from itertools.cycle(batches)
        return
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            return


def _steepest_descent(lrs: list[float], losses: list[float], smoothing: float) -> float:
    # Central differences of loss against log(lr), one-sided at the ends (as numpy.gradient).
    logs = [math.log(lr) for lr in lrs]
    last = len(lrs) - 1
    slopes = []
    for i in range(len(lrs)):
        lo, hi = max(i - 1, 0), min(i + 1, last)
        slopes.append((losses[hi] - losses[lo]) / (logs[hi] - logs[lo]))
    # Until the average has seen about 1 / smoothing losses, its step-to-step change is
    # dominated by batch noise rather than by the lr, so those points are not candidates.
    first = min(math.ceil(1.0 / smoothing) - 1, last)
    return lrs[min(range(first, len(slopes)), key=slopes.__getitem__)]


def lr_finder(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    optimizer_factory: Callable[[Iterable[nn.Parameter]], Optimizer] | None = None,
    optimizer: Optimizer | None = None,
    loss_fn: Callable[[nn.Module, Any], Tensor] | None = None,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    smoothing: float = 0.05,
    diverge_factor: float = 4.0,
) -> LRFinderResult:
    """Train briefly with an exponentially growing learning rate and suggest a good one.

    Step `i` uses `start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))`. The loss is smoothed
    by an exponential moving average, `avg = smoothing * loss + (1 - smoothing) * avg`, divided by
    `1 - (1 - smoothing) ** (i + 1)` to remove the bias towards 0. The sweep stops early once the
    smoothed loss exceeds `diverge_factor` times the best so far, or the loss is not finite. The
    suggestion is the learning rate at the steepest descent of the smoothed loss against log(lr)
    (central differences), among the points where the average has seen at least
    `1 / smoothing` losses; it is a common starting point, and a value somewhat below it is the
    cautious choice.

    Apart from consuming `batches`, the finder has no side effects: the model's parameters,
    buffers, gradients and per-module training modes, the global torch RNG state (and that of the
    CUDA devices the model lives on), and the state of a passed `optimizer` are all restored
    afterwards, even on error.

    Args:
        model: The module to probe; put in training mode during the sweep.
        batches: Batches fed to `loss_fn`, cycled if fewer than `num_steps`.
        optimizer_factory: Builds the optimizer from `model.parameters()`; defaults to AdamW.
        optimizer: An existing optimizer to use instead; its state is restored afterwards.
        loss_fn: `loss_fn(model, batch) -> scalar loss`. The default calls `model(*batch)` for a
            tuple or list batch and `model(batch)` otherwise, and takes the output's `.loss`
            attribute if it has one, else the output itself.
        start_lr: First learning rate, a finite number > 0.
        end_lr: Last learning rate, finite and > `start_lr`.
        num_steps: Number of learning rates to try, an int >= 2.
        smoothing: Weight of the newest loss in the moving average, in (0, 1]; 1 means none.
        diverge_factor: Early-stop threshold relative to the best smoothed loss, > 1 (inf
            never stops early).

    Returns:
        The learning rates tried, their smoothed losses, and the suggested learning rate.

    Raises:
        ValueError: On an out-of-range argument, both `optimizer` and `optimizer_factory` given,
            empty `batches`, or fewer than two finite losses to suggest from.
    """
    where = "lr_finder"
    start_lr = _check_real(
        where, "start_lr", start_lr, "a finite number > 0", lambda x: 0.0 < x < math.inf
    )
    end_lr = _check_real(
        where,
        "end_lr",
        end_lr,
        f"finite and > start_lr ({start_lr!r})",
        lambda x: start_lr < x < math.inf,
    )
    num_steps = _check_int(where, "num_steps", num_steps, 2)
    smoothing = _check_real(
        where, "smoothing", smoothing, "a number in (0, 1]", lambda x: 0.0 < x <= 1.0
    )
    diverge_factor = _check_real(
        where, "diverge_factor", diverge_factor, "a number > 1", lambda x: x > 1.0
    )
    if optimizer is not None and optimizer_factory is not None:
        raise ValueError("lr_finder: pass optimizer or optimizer_factory, not both")

    loss_fn = loss_fn or _default_loss
    params = list(model.parameters())
    tensors = [*params, *model.buffers()]
    saved_values = [t.detach().clone() for t in tensors]
    saved_grads = [None if p.grad is None else p.grad.clone() for p in params]
    saved_modes = [(m, m.training) for m in model.modules()]
    saved_optimizer = None if optimizer is None else copy.deepcopy(optimizer.state_dict())
    cuda_devices = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})

    lrs: list[float] = []
    losses: list[float] = []
    steps_run = 0
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            if optimizer is None:
                factory = optimizer_factory or partial(torch.optim.AdamW, lr=start_lr)
                optimizer = factory(model.parameters())
            model.train()
            avg, best = 0.0, math.inf
            for step, batch in zip(range(num_steps), _cycle(batches), strict=False):
                steps_run += 1
                lr = start_lr * (end_lr / start_lr) ** (step / (num_steps - 1))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model, batch)
                loss.backward()
                optimizer.step()
                value = float(loss.detach())
                if not math.isfinite(value):
                    break
                avg = smoothing * value + (1.0 - smoothing) * avg
                smoothed = avg / (1.0 - (1.0 - smoothing) ** (step + 1))
                lrs.append(lr)
                losses.append(smoothed)
                best = min(best, smoothed)
                if smoothed > diverge_factor * best:
                    break
    finally:
        with torch.no_grad():
            for tensor, saved in zip(tensors, saved_values, strict=True):
                tensor.copy_(saved)
        for param, grad in zip(params, saved_grads, strict=True):
            param.grad = grad
        for module, training in saved_modes:
            module.training = training
        if saved_optimizer is not None and optimizer is not None:
            optimizer.load_state_dict(saved_optimizer)

    if steps_run == 0:
        raise ValueError("lr_finder: batches must yield at least one batch, got none")
    if len(lrs) < 2:
        raise ValueError(
            f"lr_finder: got {len(lrs)} finite loss(es), need >= 2 to suggest a learning rate;"
            f" lower start_lr (got {start_lr!r})"
        )
    return LRFinderResult(
        lrs=lrs, losses=losses, suggested_lr=_steepest_descent(lrs, losses, smoothing)
    )

"""`Trainer`: a thin loop that composes the kit's parts (see the package docstring)."""

from __future__ import annotations

import contextlib
import logging as _pylogging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from transformer_kit import schedules
from transformer_kit.averaging import EMA, inference_weights
from transformer_kit.checkpoint import (
    CheckpointManager,
)
from transformer_kit.data import RandomBatches, TokenDataset
from transformer_kit.distributed import (
    DistributedContext,
    all_reduce_mean,
    init_distributed,
    resolve_device,
)
from transformer_kit.fsdp import shard_model
from transformer_kit.logging import MetricLogger, MultiLogger
from transformer_kit.optim import build_optimizer
from transformer_kit.trainer._checkpointing import CheckpointMixin
from transformer_kit.trainer._monitor import (
    flops_per_token,
    peak_flops,
    peak_memory_mb,
    weight_norm,
)
from transformer_kit.trainer.config import TrainerConfig

__all__ = ["Batch", "Trainer", "TrainingError"]

_log = _pylogging.getLogger(__name__)

Batch = tuple[Tensor, Tensor]


class TrainingError(RuntimeError):
    """The run cannot go on (too many non-finite steps, repeated loss spikes)."""


class Trainer(CheckpointMixin):
    """Composes a model, data and the kit's parts into a resumable training loop.

    Args:
        model: any module whose `forward(inputs, targets)` returns an object with `.loss`
            (the kit's GPT does); override `training_step` for other models.
        config: loop settings.
        train_data: the training tokens; random windows are drawn from them.
        val_data: held-out tokens for evaluation (strided, non-overlapping windows).
        optimizer / scheduler: built by `configure_optimizer` / `configure_scheduler` when None.
        loggers: where metrics go (rank 0 only).
        checkpoints: a CheckpointManager; without one nothing is saved and `resume` is an error.
        early_stopping: an object with `update(metrics, step=...) -> bool` and `state_dict()`.
        augment: a callable `(inputs, targets, *, epoch) -> (inputs, targets)` with state_dict.
        callbacks: objects with any of `on_train_start`, `on_step_end`, `on_evaluate`,
            `on_checkpoint`, `on_train_end`; each is called with the trainer (and metrics or
            paths) and requests a stop by returning True.

    Example:
        >>> trainer = Trainer(GPT(GPTConfig(vocab_size=96)), TrainerConfig(max_steps=200),
        ...                   TokenDataset(train_ids, 256), TokenDataset(val_ids, 256))
        >>> final_metrics = trainer.fit()
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainerConfig,
        train_data: TokenDataset,
        val_data: TokenDataset | None = None,
        *,
        optimizer: Optimizer | None = None,
        scheduler: LRScheduler | None = None,
        loggers: Sequence[MetricLogger] = (),
        checkpoints: CheckpointManager | None = None,
        early_stopping: Any | None = None,
        augment: Callable[..., Batch] | None = None,
        callbacks: Sequence[object] = (),
    ) -> None:
        self.config = config
        self.device = resolve_device(config.device, name="TrainerConfig.device")
        if config.precision == "fp16" and self.device.type != "cuda":
            raise ValueError(
                "TrainerConfig.precision='fp16' needs a CUDA device; use 'bf16' on CPU"
            )
        self.context: DistributedContext = init_distributed(self.device)
        if self.context.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.context.local_rank)
        _check_cuda_index(self.device, config.device)
        self.model = model.to(self.device)
        if config.fsdp:
            if not self.context.enabled:
                raise ValueError(
                    "TrainerConfig.fsdp=True shards over processes: launch with "
                    "`torchrun --nproc_per_node=N` (N >= 2), or set fsdp=False"
                )
            # Before the optimizer is built, so that it holds the shards.
            self.model = shard_model(self.model)
        self.train_data = train_data
        self.val_data = val_data
        self.batches = RandomBatches(
            train_data,
            config.batch_size,
            seed=config.seed,
            rank=self.context.rank,
            world_size=self.context.world_size,
        )
        self.optimizer = optimizer if optimizer is not None else self.configure_optimizer()
        self.scheduler = (
            scheduler if scheduler is not None else self.configure_scheduler(self.optimizer)
        )
        self.scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None
        self.logger = MultiLogger(list(loggers) if self.context.is_main else [])
        self.checkpoints = checkpoints
        self.early_stopping = early_stopping
        self.augment = augment
        self.callbacks = list(callbacks)
        self.step = 0
        self.bad_steps = 0
        self.consecutive_bad_steps = 0
        self.rollbacks = 0
        self.loss_mean: float | None = None
        self.best_metrics: dict[str, float] = {}
        self.stop_requested = False
        # The checkpoint folder whose run this trainer continues (rank 0's view): set by
        # resume(), load_state_dict(), a checkpoint saved, or a fit() past check_fresh_start().
        self._continues_in: Path | None = None
        self._tokens_per_s = 0.0
        # The module that runs forward passes: DDP and/or compile wrap the plain model.
        self._forward: nn.Module = self._wrap_model()
        # After DDP's wrapper has broadcast rank 0's weights, so every rank averages the same.
        self.ema = self.configure_ema()

    @property
    def _uses_ddp(self) -> bool:
        """Whether forward passes run inside DDP: distributed, and not sharded by FSDP."""
        return self.context.enabled and not self.config.fsdp

    def _wrap_model(self) -> nn.Module:
        """The plain model, wrapped in DDP when distributed without FSDP, compiled if asked."""
        forward: nn.Module = self.model
        if self._uses_ddp:
            ids = [self.device.index] if self.device.type == "cuda" else None
            forward = DistributedDataParallel(self.model, device_ids=ids)
        if self.config.compile:
            forward = torch.compile(forward)  # type: ignore[assignment]
        return forward

    # ------------------------------------------------------------------ parts (overridable)
    def configure_optimizer(self) -> Optimizer:
        """The recipe named by `TrainerConfig.optimizer` (see optim.md).

        "adamw" decays matrices only: norm gains, biases and embeddings are not decayed, since
        pulling them towards zero regularises nothing useful (GPT-2/nanoGPT practice). "muon"
        keeps the output head on AdamW with the embeddings, as the Muon recipes do.
        """
        head = getattr(self.model, "head", None)
        exclude = [cast(nn.Parameter, head.weight)] if isinstance(head, nn.Linear) else []
        return build_optimizer(
            self.model,
            self.config.optimizer,
            lr=self.config.lr,
            weight_decay=self.config.weight_decay,
            betas=self.config.betas,
            exclude_from_muon=exclude,
        )

    def configure_scheduler(self, optimizer: Optimizer) -> LRScheduler:
        """Linear warmup then cosine decay to `min_lr_ratio` at `max_steps`."""
        return schedules.lambda_lr(
            optimizer,
            schedules.warmup_cosine,
            warmup_steps=min(self.config.warmup_steps, self.config.max_steps),
            total_steps=self.config.max_steps,
            min_ratio=self.config.min_lr_ratio,
        )

    def configure_ema(self) -> EMA | None:
        """The weight average of `TrainerConfig.ema_decay`, or None when it is not set."""
        if self.config.ema_decay is None:
            return None
        return EMA(self.model, decay=self.config.ema_decay)

    def training_step(self, batch: Batch) -> Tensor:
        """Mean loss of one micro-batch over its non-ignored target tokens."""
        inputs, targets = batch
        with self._autocast():
            output = self._forward(inputs, targets)
        return output.loss

    def evaluation_step(self, batch: Batch) -> dict[str, float]:
        """Summed loss and token count of one batch, so means weight every token equally."""
        inputs, targets = batch
        with self._autocast():
            output = self._forward(inputs, targets)
        tokens = self._count_targets(targets)
        return {"loss_sum": float(output.loss) * tokens, "tokens": float(tokens)}

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, float]:
        """Train until `max_steps`, the time limit, early stopping or a callback says stop.

        In a distributed run without FSDP the model trains inside DDP, and `fit()` drops that
        wrapper when it returns or fails (see docs/trainer.md): `training_step` called after
        `fit()` no longer averages gradients across ranks, and a compiled model compiles again
        on the next `fit()`.

        Returns:
            The last evaluation's metrics (plus `step`).

        Raises:
            CheckpointError: from `check_fresh_start`, before anything is written.
        """
        cfg = self.config
        if self._uses_ddp and self._forward is self.model:  # a second fit(): wrap again
            self._forward = self._wrap_model()
        try:
            self.check_fresh_start()
            self._mark_continues()
            last_eval = self._fit_loop()
        finally:
            # Even when the run fails: loggers flush what they buffer (TensorBoard holds events).
            self.logger.close()
            if self._uses_ddp:
                # DDP's reducer holds the process group. Let it go now, so that the group dies
                # inside shutdown_distributed() rather than whenever this trainer is collected:
                # a gloo group destroyed at interpreter exit can deadlock its worker thread on
                # the GIL (seen as a hang in the two-process test). Evaluation after fit() runs
                # on the plain model, which computes the same thing.
                self._forward = self.model
        if cfg.restore_best and self.checkpoints is not None and self.checkpoints.exists("best"):
            self.model.load_state_dict(inference_weights(self.checkpoints.load("best")))
        self._notify("on_train_end", last_eval)
        return last_eval

    def _fit_loop(self) -> dict[str, float]:
        cfg = self.config
        start = time.perf_counter()
        self._notify("on_train_start")
        last_eval: dict[str, float] = {}
        while self.step < cfg.max_steps and not self.stop_requested:
            metrics = self._optimizer_step()
            self.step += 1
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                self.log(metrics)
            self._watch_for_spike(metrics["loss"])
            evaluated = False
            if self.step % cfg.eval_every == 0:
                last_eval = self._evaluate_and_report()
                evaluated = True
            out_of_time = cfg.time_limit_s is not None and time.perf_counter() - start > (
                cfg.time_limit_s
            )
            if out_of_time:
                _log.info("time limit of %.0f s reached at step %d", cfg.time_limit_s, self.step)
                self.stop_requested = True
            due = (
                evaluated if cfg.checkpoint_every is None else self.step % cfg.checkpoint_every == 0
            )
            # Never overwrite `last` in the middle of a non-finite streak: the state from before
            # it is the one worth going back to.
            if due and not self.stop_requested and self.consecutive_bad_steps == 0:
                self.save_checkpoint(last_eval if evaluated else None)
            self._notify("on_step_end", metrics)
        if last_eval.get("step") != self.step:
            last_eval = self._evaluate_and_report()
        self.save_checkpoint(last_eval)
        return last_eval

    def _optimizer_step(self) -> dict[str, float]:
        cfg = self.config
        tick = time.perf_counter()
        micro_batches = [self.next_batch() for _ in range(cfg.grad_accum_steps)]
        counts = [self._count_targets(targets) for _, targets in micro_batches]
        total = sum(counts)
        loss = torch.zeros((), device=self.device)
        for index, batch in enumerate(micro_batches):
            # Token-weighted so k micro-batches give exactly the gradient of the one big batch
            # even when padding makes their token counts differ.
            weight = counts[index] / total if total else 1.0 / len(micro_batches)
            last = index == len(micro_batches) - 1
            if cfg.fsdp:  # FSDP2 has no no_sync(): reduce-scatter only after the last one
                self.model.set_requires_gradient_sync(last)  # type: ignore[operator]
            no_sync = self.context.enabled and not cfg.fsdp and not last
            with self._forward.no_sync() if no_sync else contextlib.nullcontext():  # type: ignore[operator]
                micro_loss = self.training_step(batch) * weight
                if self.scaler is not None:
                    self.scaler.scale(micro_loss).backward()
                else:
                    micro_loss.backward()
            loss += micro_loss.detach().float()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        loss_value, norm_value = float(loss), float(grad_norm)
        metrics: dict[str, float] = {
            "loss": loss_value,
            "lr": float(self.scheduler.get_last_lr()[0]),
        }
        finite = math.isfinite(loss_value) and (
            math.isfinite(norm_value) or self.scaler is not None
        )
        if finite:
            stepped = True
            if self.scaler is not None:
                # get_scale() syncs with the GPU: read it only when the average needs to know.
                scale = None if self.ema is None else self.scaler.get_scale()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if scale is not None:
                    stepped = self.scaler.get_scale() >= scale  # the scale drops when it skipped
            else:
                self.optimizer.step()
            if self.ema is not None and stepped:
                self.ema.update(self.model)
            self.consecutive_bad_steps = 0
        else:
            self.bad_steps += 1
            self.consecutive_bad_steps += 1
            _log.warning(
                "step %d: non-finite loss %s / grad norm %s; update skipped (%d in a row)",
                self.step + 1,
                loss_value,
                norm_value,
                self.consecutive_bad_steps,
            )
            if self.consecutive_bad_steps >= cfg.max_bad_steps:
                self.optimizer.zero_grad(set_to_none=True)
                raise TrainingError(
                    f"{self.consecutive_bad_steps} consecutive non-finite steps, the last at step "
                    f"{self.step + 1} (loss {loss_value}, grad norm {norm_value}); checkpoints "
                    "were left as they were. Lower the learning rate or check the data."
                )
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        elapsed = time.perf_counter() - tick
        tokens = cfg.tokens_per_step(
            block_size=self.train_data.block_size, world_size=self.context.world_size
        )
        self._tokens_per_s = tokens / elapsed if elapsed > 0 else 0.0
        metrics.update(
            grad_norm=norm_value,
            tokens_per_s=self._tokens_per_s,
            bad_steps=self.bad_steps,
            epoch=self.batches.epoch,
        )
        return all_reduce_mean(metrics, self.context, self.device)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss and perplexity on the validation split and on a fixed train sample.

        Override it to add domain metrics (call super() first); the loop then passes the result
        to `on_evaluate` callbacks, early stopping, the loggers and the checkpoint manager.
        """
        metrics: dict[str, float] = {"step": float(self.step), **self._losses()}
        metrics.update(self._health_metrics())
        return metrics

    @torch.no_grad()
    def _losses(self) -> dict[str, float]:
        """Mean loss and perplexity of the current weights on each split."""
        was_training = self.model.training
        self.model.eval()
        metrics: dict[str, float] = {}
        splits = {"train": self._train_eval_batches()}
        if self.val_data is not None:
            splits["val"] = self.val_data.eval_batches(
                self.config.batch_size, max_batches=self.config.eval_batches
            )
        for split, batches in splits.items():
            loss_sum = tokens = 0.0
            for inputs, targets in batches:
                out = self.evaluation_step((inputs.to(self.device), targets.to(self.device)))
                loss_sum += out["loss_sum"]
                tokens += out["tokens"]
            reduced = all_reduce_mean({"loss_sum": loss_sum, "tokens": tokens}, self.context)
            mean = reduced["loss_sum"] / max(reduced["tokens"], 1.0)
            metrics[f"{split}_loss"] = mean
            metrics[f"{split}_ppl"] = math.exp(min(mean, 80.0))
        self.model.train(was_training)
        return metrics

    def _evaluate_and_report(self) -> dict[str, float]:
        # Callbacks see the metrics first and may add to them (a domain score computed from
        # samples, say), so early stopping and the loggers see the complete set. With an EMA
        # all of that judges the averaged weights; `raw_*` are the trained weights' losses,
        # computed first (a second pass over the evaluation batches).
        raw = {} if self.ema is None else self._losses()
        with contextlib.nullcontext() if self.ema is None else self.ema.applied(self.model):
            metrics = self.evaluate()
            metrics.update({f"raw_{key}": value for key, value in raw.items() if "loss" in key})
            self._notify("on_evaluate", metrics)
            stop = self.early_stopping is not None and self.early_stopping.update(
                metrics, step=self.step
            )
        if stop:
            _log.info("early stopping at step %d", self.step)
            self.stop_requested = True
        self.log(metrics)
        return metrics

    # ------------------------------------------------------------------ logging helpers
    def log(self, metrics: Mapping[str, float]) -> None:
        """Send metrics to every logger (rank 0 only)."""
        self.logger.log({k: v for k, v in metrics.items() if k != "step"}, self.step)

    def log_text(self, tag: str, text: str) -> None:
        """Send text (e.g. a generated sample) to the loggers that accept text."""
        self.logger.log_text(tag, text, self.step)

    # ------------------------------------------------------------------ internals
    def next_batch(self) -> Batch:
        """One training micro-batch on the device, augmented when an augmentation is set."""
        inputs, targets = next(self.batches)
        if self.augment is not None:
            inputs, targets = self.augment(inputs, targets, epoch=self.batches.epoch)
        return inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)

    def _train_eval_batches(self) -> Iterator[Batch]:
        # A fixed sample of random train windows (same every evaluation, spread over the whole
        # corpus) that never touches the training data stream's RNG.
        # Modulo 2**64, as torch.manual_seed itself wraps negative seeds: every seed the config
        # accepts gives a seed torch accepts.
        generator = torch.Generator().manual_seed((self.config.seed + 1_000_003) % 2**64)
        for _ in range(self.config.eval_batches):
            yield self.train_data.sample_batch(self.config.batch_size, generator=generator)

    def _count_targets(self, targets: Tensor) -> int:
        pad_id = getattr(getattr(self.model, "config", None), "pad_id", None)
        if pad_id is None:
            return targets.numel()
        return int((targets != pad_id).sum())

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.config.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _health_metrics(self) -> dict[str, float]:
        metrics = {
            "weight_norm": weight_norm(self.model),
            "peak_mem_mb": peak_memory_mb(self.device),
        }
        flops = flops_per_token(self.model)
        peak = peak_flops(self.device)
        if flops is not None and peak is not None and self._tokens_per_s > 0:
            # Model FLOPs utilisation: achieved model FLOPs / the hardware's dense bf16 peak.
            metrics["mfu"] = flops * self._tokens_per_s / (peak * self.context.world_size)
        return metrics

    def _watch_for_spike(self, loss: float) -> None:
        if not math.isfinite(loss):
            return
        factor = self.config.spike_factor
        if (
            factor is not None
            and self.loss_mean is not None
            and self.step > self.config.warmup_steps
            and loss > factor * self.loss_mean
        ):
            self._rollback(loss)
            return
        # An exponential moving mean over ~50 steps: slow enough to ignore noise.
        self.loss_mean = loss if self.loss_mean is None else 0.98 * self.loss_mean + 0.02 * loss

    def _rollback(self, loss: float) -> None:
        if self.checkpoints is None:
            _log.warning("loss spike at step %d but no checkpoints to roll back to", self.step)
            return
        if self.rollbacks >= self.config.max_rollbacks:
            raise TrainingError(
                f"loss {loss:.4f} at step {self.step} exceeds {self.config.spike_factor} x its "
                f"running mean {self.loss_mean:.4f} after {self.rollbacks} rollbacks; stopping"
            )
        found = self.checkpoints.load_latest_good()
        if found is None:
            return
        name, state = found
        skipped_to = self.step
        rollbacks = self.rollbacks + 1
        self.load_state_dict(state, restore_data=False)
        self.rollbacks = rollbacks
        _log.warning(
            "loss spike %.4f at step %d: rolled back to %s (step %d), skipping those batches",
            loss,
            skipped_to,
            name,
            self.step,
        )
        self.log({"rollback": float(self.rollbacks)})

    def _notify(self, event: str, *args: Any) -> None:
        for callback in self.callbacks:
            method = getattr(callback, event, None)
            if method is not None and method(self, *args) is True:
                self.stop_requested = True


def _check_cuda_index(device: torch.device, configured: str) -> None:
    """Refuse a CUDA device index this machine does not have (torch fails later, obscurely)."""
    if device.type != "cuda" or device.index is None:
        return
    count = torch.cuda.device_count()
    if device.index >= count:
        raise ValueError(
            f"TrainerConfig.device={configured!r} resolves to {device}, but this machine has "
            f"{count} CUDA device(s) (cuda:0 to cuda:{count - 1}); use one of them or 'cuda'"
        )

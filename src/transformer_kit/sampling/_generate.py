"""`generate`: batched sampling with constraints, penalties, filters and per-row stopping.

Each step runs the model once (`_step._Stepper`: one new position against a KV cache where the
model has `new_cache`, else a recompute of the cropped context), shapes the logits in one fixed
order and draws one token per unfinished row; finished rows are padded, and once they make up
a quarter of the rows the model is fed they are dropped from its batch (`_drop_finished`).

    >>> generate(torch.nn.Embedding(5, 5), torch.tensor([[1, 2]]), 3, temperature=0.0).shape
    torch.Size([1, 5])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from transformer_kit._numbers import _check_int, _check_real
from transformer_kit.sampling._checks import (
    _check_prompt,
    _output_buffer,
    _stop_sequences,
    _token_id,
    _token_ids,
    _vocab_size,
)
from transformer_kit.sampling._filters import (
    LogitsFilter,
    _allowed_mask,
    apply_temperature,
    filter_min_p,
    filter_top_k,
    filter_top_p,
)
from transformer_kit.sampling._penalties import (
    apply_frequency_penalty,
    apply_presence_penalty,
    apply_repetition_penalty,
)
from transformer_kit.sampling._step import (
    _check_attention_mask,
    _inference,
    _resolve_block_size,
    _Stepper,
)

__all__ = ["AllowedNext", "Slide", "generate"]

Slide = Literal["recompute", "rolling"]
"""How `generate` moves the context past the window: exact recompute, or a rolling cache."""

AllowedNext = Callable[[list[int]], Collection[int]]
"""A constraint: one row's ids so far (prompt included) to the ids allowed next."""


def generate(
    model: nn.Module,
    ids: Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    allowed_next: AllowedNext | Sequence[AllowedNext] | None = None,
    stop_ids: Sequence[int] = (),
    stop_sequences: Sequence[Sequence[int]] = (),
    generator: torch.Generator | None = None,
    filters: Sequence[LogitsFilter] = (),
    block_size: int | None = None,
    pad_id: int = 0,
    use_cache: bool = True,
    attention_mask: Tensor | None = None,
    num_threads: int | None = None,
    slide: Slide = "recompute",
) -> Tensor:
    """Extend each sequence in `ids` by up to `max_new_tokens` sampled tokens.

    At each step the model sees the last `block_size` tokens and only its logits at the last
    position are used. With `use_cache` and a model that has `new_cache(batch_size, max_length)`
    (such as `GPT`), the prompt is prefilled once and each step then feeds one new position;
    once the sequence outgrows `block_size`, each step prefills the last `block_size` tokens
    again (the window slides one token per step). Either way the model sees exactly the
    context of the full recompute, so the tokens are the same. `slide="rolling"` trades that
    exactness for speed past the window (below). The logits then go through this fixed order:

    1. `allowed_next` mask (`mask_allowed` with the ids the callable returns for the row);
    2. repetition, presence, then frequency penalty, over the row's whole sequence so far
       (prompt included, not cropped to `block_size`);
    3. temperature; `temperature=0` is greedy: the argmax is taken here (lowest id on ties)
       in place of steps 4 to 8;
    4. top-k; 5. top-p; 6. min-p; 7. each of `filters`, in order;
    8. a draw with `torch.multinomial(probs, 1, generator=generator)`.

    A row finishes when its generated tokens end with a stop sequence: any of
    `stop_sequences`, or one token of `stop_ids`. The stop tokens are kept and later positions
    hold `pad_id`. A stop sequence must lie wholly inside the generated tokens, so a prompt's
    own tail never completes one. Generation ends early once every row has finished, so the
    result may be shorter than `T + max_new_tokens`.

    The model runs under `torch.inference_mode()` in eval mode; every submodule's training flag
    is restored afterwards, even on error. `ids` is never mutated, and the result is an
    ordinary tensor (not an inference tensor), so it can be edited or trained on.

    Args:
        model: Maps ids `(B, T)` to logits `(B, T, V)`, or to an object with such a `.logits`.
        ids: Prompt token ids, an integer tensor of shape `(B, T)` with `T >= 1` (not a list:
            wrap one with `torch.tensor`), each in `[0, model.config.vocab_size)` when the
            model has that field.
        max_new_tokens: Maximum number of tokens to append, an int >= 0.
        temperature: Softmax temperature, >= 0; 0 is greedy.
        top_k: Keep only the `top_k` largest logits (ties at the cut kept); None disables.
        top_p: Keep the smallest most-probable set with mass >= `top_p`; None disables.
        min_p: Keep the tokens with probability >= `min_p` times the top one; None disables.
        repetition_penalty: CTRL penalty for tokens already in the row, > 0; 1 disables.
        presence_penalty: Subtracted once from tokens already in the row; 0 disables.
        frequency_penalty: Subtracted per occurrence from tokens already in the row; 0
            disables.
        allowed_next: Called with one unfinished row's ids so far (`list[int]`, prompt
            included) and returns the ids allowed next; every other token is masked out.
            A sequence of `B` callables gives each row its own: row `r` asks the `r`-th (a
            constraint with a per-row setting, e.g. each piece's own length). None allows
            everything.
        stop_ids: Token ids in `[0, V)` that finish a row, each a one-token stop sequence.
        stop_sequences: Non-empty sequences of token ids in `[0, V)` (a list of lists, such
            as `[[5, 6]]`) that finish a row once its generated tail equals one.
        generator: Source of randomness; the same seed gives the same output. None uses torch's
            global RNG.
        filters: Extra `LogitsFilter`s applied after min-p, in order.
        block_size: Context length fed to the model; defaults to `model.config.context_limit`
            (block_size, or max_position for rope / alibi) or else `model.config.block_size`
            when the model has one, else the whole sequence.
        pad_id: Fill for finished rows, an int in `[0, V)`. It must be a valid input id:
            finished rows are fed to the model until they make up a quarter of the rows it
            is fed, and then dropped from the batch (and its cache), which leaves the tokens
            unchanged.
        use_cache: Use the model's KV cache when it has `new_cache`; False recomputes the
            cropped context at every step.
        attention_mask: `(B, T)` bool or 0/1, True at real prompt tokens, for prompts of
            different lengths padded on the left (each row False then True). The model must
            take `attention_mask` as `GPT.forward` does (covering every column seen so far);
            generated tokens count as real. Penalties and `allowed_next` still see the pad ids.
        num_threads: torch's intra-op threads while generating (`torch.set_num_threads`, a
            process-wide setting, restored afterwards); None leaves them alone. One token at
            batch 1 is little work to share: on a 2-core CPU busy with other jobs, 2 threads
            took 16x longer than 1; idle, they were up to 1.3x faster (docs/benchmarks.md).
            1 is the safe choice for batch-1 decoding on a shared machine.
        slide: how the context moves once the sequence outgrows the window. "recompute" (the
            default): as above, exactly the cropped recompute, at the cost of a prefill of
            the whole window per step. "rolling": the model's cache is made with
            `new_cache(B, block_size, rolling=True)` and drops its oldest position as each new
            one comes, so every step feeds one position. Each token then attends to the last
            `block_size` tokens (None: the model's own `config.block_size`, the length it was
            trained on), whose keys were computed over their own windows: sliding-window
            attention, not the cropped recompute. A prompt longer than the window is fed
            whole (one token per call past the window), so its positions do too. Positions
            keep counting from the prompt's first token, so it needs a model with relative
            positions (rope, alibi) whose `config.context_limit` (max_position) covers the
            whole sequence. Use it to decode a rope or alibi model far past its training
            length: attending to more positions than it was trained on can cost it dearly
            (docs/sampling.md).

    Returns:
        A new tensor `(B, T + n)` with `n <= max_new_tokens`, whose first `T` columns are `ids`.

    Every argument is checked once, before the first step: an int parameter must be an int
    (a NumPy int too, never a bool), a number parameter a real number (not a bool, not NaN).
    `V` is `model.config.vocab_size` when the model has it; otherwise the prompt's ids are not
    range-checked, and the stop ids and `pad_id` are checked against the logits' width at the
    first step.

    Raises:
        ValueError: If `ids` is not a 2-D integer tensor with at least one column or holds an
            id outside `[0, V)`, another argument has the wrong type or is out of range (the
            message names the parameter and the value), `allowed_next` is a sequence whose
            length is not `B`, or it returns no ids or an id outside `[0, V)` (the message
            names the step and the row). Also if the `(B, T + max_new_tokens)` output, which
            is allocated up front, cannot be (the message names `max_new_tokens` and the size).

    Example:
        >>> table = torch.nn.Embedding(5, 5)
        >>> out = generate(table, torch.tensor([[1, 2]]), 3, top_k=2, stop_sequences=[[3, 4]])
        >>> out.shape[1] <= 5
        True
    """
    # Every argument is checked (and numbers made plain ints and floats) once, before the loop.
    where = "generate"
    vocab_size = _vocab_size(model)  # None: checked against the logits' width at the first step
    _check_prompt(ids, where, vocab_size)
    max_new_tokens = _check_int(where, "max_new_tokens", max_new_tokens, 0)
    temperature = _check_real(
        where,
        "temperature",
        temperature,
        "a finite number >= 0 (0 is greedy)",
        lambda x: 0.0 <= x < math.inf,
    )
    if top_k is not None:
        top_k = _check_int(where, "top_k", top_k, 1, "an int >= 1 or None")
    if top_p is not None:
        top_p = _check_real(
            where, "top_p", top_p, "a number in (0, 1] or None", lambda x: 0.0 < x <= 1.0
        )
    if min_p is not None:
        min_p = _check_real(
            where, "min_p", min_p, "a number in [0, 1] or None", lambda x: 0.0 <= x <= 1.0
        )
    repetition_penalty = _check_real(
        where,
        "repetition_penalty",
        repetition_penalty,
        "a finite number > 0 (1 disables)",
        lambda x: 0.0 < x < math.inf,
    )
    presence_penalty = _check_real(
        where, "presence_penalty", presence_penalty, "a finite number (0 disables)", math.isfinite
    )
    frequency_penalty = _check_real(
        where, "frequency_penalty", frequency_penalty, "a finite number (0 disables)", math.isfinite
    )
    if num_threads is not None:
        num_threads = _check_int(where, "num_threads", num_threads, 1, "an int >= 1 or None")
    if block_size is not None:
        block_size = _check_int(where, "block_size", block_size, 1, "an int >= 1 or None")
    window = block_size  # a rolling cache's own window: None leaves it to the model
    block_size = _resolve_block_size(model, block_size, where)
    stop_tokens, sequences, pad_id = _check_stops_and_pad(
        stop_ids, stop_sequences, pad_id, vocab_size
    )
    stops = _stop_table(stop_tokens, sequences, ids)
    mask = _check_attention_mask(attention_mask, ids, where)
    _check_slide(slide, model, use_cache, mask, ids.size(1) + max_new_tokens)

    B, T = ids.shape
    rules = _row_rules(allowed_next, B)
    # Written in place, so it stays an ordinary tensor although the loop runs in inference mode.
    out = _output_buffer(where, max_new_tokens, (B, T + max_new_tokens), ids)
    out[:, :T] = ids
    n = 0  # tokens generated so far
    with _inference(model), _threads(num_threads):
        rolling = slide == "rolling"
        next_logits = _Stepper(
            model,
            window if rolling else block_size,
            "generate",
            use_cache=use_cache,
            batch_size=B,
            max_length=T + max_new_tokens,
            attention_mask=mask,
            rolling=rolling,
        )
        # Rows finish only on a stop sequence: without any, skip the bookkeeping.
        finished = torch.zeros(B, dtype=torch.bool, device=ids.device) if stops else None
        fed: Tensor | None = None  # the rows the model still sees, once finished ones are dropped
        for step in range(max_new_tokens):
            sequence = out[:, : T + step]  # (B, T + step): the prompt and the tokens so far
            if fed is None:
                logits = next_logits(sequence)  # (B, V)
            else:
                part = next_logits(sequence.index_select(0, fed))  # (F, V)
                # Dropped rows get flat logits: every row still takes its draw below, so the
                # generator advances as it would with the whole batch and the tokens are the same.
                logits = part.new_zeros(B, part.size(-1)).index_copy_(0, fed, part)
            if vocab_size is None:  # no config.vocab_size: check the ids against V, once
                vocab_size = logits.size(-1)
                _check_stops_and_pad(stop_tokens, sequences, pad_id, vocab_size)
            if rules is not None:
                done = torch.zeros(B, dtype=torch.bool) if finished is None else finished
                keep = _allowed_rows(rules, sequence, done, logits.size(-1), step)
                logits = logits.masked_fill(~keep, -math.inf)
            if repetition_penalty != 1.0:
                logits = apply_repetition_penalty(logits, sequence, repetition_penalty)
            if presence_penalty != 0.0:
                logits = apply_presence_penalty(logits, sequence, presence_penalty)
            if frequency_penalty != 0.0:
                logits = apply_frequency_penalty(logits, sequence, frequency_penalty)
            if temperature == 0.0:
                token = logits.argmax(dim=-1)  # (B,)
            else:
                logits = apply_temperature(logits, temperature)
                if top_k is not None:
                    logits = filter_top_k(logits, top_k)
                if top_p is not None:
                    logits = filter_top_p(logits, top_p)
                if min_p is not None:
                    logits = filter_min_p(logits, min_p)
                for logits_filter in filters:
                    logits = logits_filter(logits)
                probs = torch.softmax(logits, dim=-1)
                token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
            n = step + 1
            if finished is None:
                out[:, T + step] = token
                continue
            out[:, T + step] = torch.where(finished, pad_id, token.to(ids.dtype))
            finished |= _ends_with_stop(out[:, : T + n], n, stops)
            n_finished = int(finished.sum())
            if n_finished == B:
                break
            # Every dropped row is finished, so the fed ones hold the rest of the finished rows.
            n_fed = B if fed is None else fed.size(0)
            if 4 * (n_finished - (B - n_fed)) >= n_fed:
                fed = _drop_finished(next_logits, finished, fed)
    # A copy when stopped early, so the result never holds on to the unused columns.
    return out if n == max_new_tokens else out[:, : T + n].clone()


def _drop_finished(stepper: _Stepper, finished: Tensor, fed: Tensor | None) -> Tensor | None:
    """The rows to feed from now on: `fed` (None: all rows) less its finished rows.

    The stepper's cache and mask keep only the rows that stay. `generate` calls this once the
    finished rows are a quarter of those fed, which keeps the wasted work under a quarter of a
    step while copying the cache a few times per batch.
    """
    rows = torch.arange(finished.size(0), device=finished.device) if fed is None else fed
    live = ~finished.index_select(0, rows)  # (F,) among the fed rows
    keep = live.nonzero().squeeze(1)  # positions in the stepper's current rows
    stepper.reorder(keep)
    return rows.index_select(0, keep)


@contextmanager
def _threads(num_threads: int | None) -> Iterator[None]:
    """Set torch's intra-op threads for the body and restore them after; None changes nothing."""
    before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        if num_threads is not None:
            torch.set_num_threads(before)


def _check_slide(
    slide: object, model: nn.Module, use_cache: bool, mask: Tensor | None, length: int
) -> None:
    """Raise a ValueError if `slide` is unknown, or "rolling" cannot run for this call."""
    if slide not in get_args(Slide):
        raise ValueError(f"generate: slide must be one of {get_args(Slide)}, got {slide!r}")
    if slide == "recompute":
        return
    if not use_cache or not callable(getattr(model, "new_cache", None)):
        raise ValueError(
            "generate: slide='rolling' needs use_cache=True and a model with new_cache, got "
            f"use_cache={use_cache} and a {type(model).__name__}"
        )
    if mask is not None:
        raise ValueError(
            "generate: slide='rolling' cannot be combined with attention_mask (a shifted cache "
            "would drop the padded columns the positions are counted from)"
        )
    limit = getattr(getattr(model, "config", None), "context_limit", None)
    if limit is not None and length > limit:
        raise ValueError(
            f"generate: slide='rolling' keeps counting positions, so prompt + max_new_tokens "
            f"= {length} must be <= the model's config.context_limit {limit} (max_position)"
        )


def _check_stops_and_pad(
    stop_ids: object, stop_sequences: object, pad_id: object, vocab_size: int | None
) -> tuple[list[int], list[list[int]], int]:
    """`stop_ids`, `stop_sequences` and `pad_id` as plain ints, checked against `vocab_size`.

    With `vocab_size` None, only negative ids are refused; `generate` calls this again with the
    checked values and the logits' width at the first step.
    """
    stop_tokens = _token_ids("generate", "stop_ids", stop_ids, vocab_size)
    sequences = _stop_sequences("generate", stop_sequences, vocab_size)
    note = " (finished rows feed it to the model)"
    return stop_tokens, sequences, _token_id("generate", "pad_id", pad_id, vocab_size, note)


def _stop_table(
    stop_tokens: list[int], stop_sequences: list[list[int]], ids: Tensor
) -> list[Tensor]:
    """All stop sequences grouped by length: one `(S, L)` tensor per length `L`."""
    sequences = [[token] for token in stop_tokens] + stop_sequences
    lengths = sorted({len(sequence) for sequence in sequences})
    return [
        torch.tensor([s for s in sequences if len(s) == n], dtype=ids.dtype, device=ids.device)
        for n in lengths
    ]


def _ends_with_stop(out: Tensor, n_generated: int, stops: list[Tensor]) -> Tensor:
    """Rows `(B,)` whose last `n_generated` tokens end with one of the stop sequences."""
    hit = torch.zeros(out.size(0), dtype=torch.bool, device=out.device)
    for group in stops:  # (S, L)
        length = group.size(1)
        if length <= n_generated:
            tail = out[:, -length:]  # (B, L)
            hit |= (tail[:, None, :] == group[None]).all(dim=-1).any(dim=-1)
    return hit


def _row_rules(
    allowed_next: AllowedNext | Sequence[AllowedNext] | None, batch: int
) -> list[AllowedNext] | None:
    """One `allowed_next` callable per row, or None when nothing is constrained."""
    if allowed_next is None:
        return None
    if callable(allowed_next):
        return [allowed_next] * batch
    wanted = f"generate: allowed_next must be a callable or a sequence of {batch} callables"
    if not isinstance(allowed_next, Sequence) or isinstance(allowed_next, (str, bytes)):
        raise ValueError(f"{wanted}, got {allowed_next!r}")
    rules = list(allowed_next)
    if len(rules) != batch:
        raise ValueError(f"{wanted} (one per row of ids), got {len(rules)} items")
    for row, rule in enumerate(rules):
        if not callable(rule):
            raise ValueError(f"{wanted}; item {row} is {rule!r}, not callable")
    return rules


def _allowed_rows(
    rules: list[AllowedNext],
    out: Tensor,
    finished: Tensor,
    vocab_size: int,
    step: int,
) -> Tensor:
    """The `(B, V)` mask of the ids `allowed_next` allows per unfinished row; all for the rest."""
    rows = []
    for row, (sequence, done) in enumerate(zip(out.tolist(), finished.tolist(), strict=True)):
        if done:
            rows.append(torch.ones(vocab_size, dtype=torch.bool, device=out.device))
        else:
            subject = f"generate: allowed_next for row {row} at step {step}"
            rows.append(_allowed_mask(rules[row](sequence), vocab_size, out.device, subject))
    return torch.stack(rows)  # (B, V)

"""`beam_search`: length-normalised log-probability beam search with finished hypotheses.

Deterministic: no sampling, ties go to the lower beam then the lower token id, so
`num_beams=1` without stop ids is greedy decoding.

    >>> out, score = beam_search(torch.nn.Embedding(4, 4), torch.tensor([[1]]), 2, 3)
    >>> out.shape, score.shape
    (torch.Size([1, 4]), torch.Size([1]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from transformer_kit._numbers import _as_int, _check_int, _check_real
from transformer_kit.sampling._checks import (
    _check_prompt,
    _output_buffer,
    _token_ids,
    _vocab_size,
)
from transformer_kit.sampling._step import _inference, _resolve_block_size, _Stepper

__all__ = ["beam_search"]


def beam_search(
    model: nn.Module,
    ids: Tensor,
    num_beams: int,
    max_new_tokens: int,
    *,
    length_penalty: float = 1.0,
    stop_ids: Sequence[int] = (),
    block_size: int | None = None,
    pad_id: int = 0,
    use_cache: bool = True,
) -> tuple[Tensor, Tensor]:
    """Find, per row, a high-scoring continuation of `ids` with a beam of `num_beams`.

    A hypothesis `y` of `n` new tokens scores `sum(log p(y_i | prefix)) / n ** length_penalty`:
    the length normalisation of Wu et al., 2016 ("Google's Neural Machine Translation System",
    section 7) in its plain `n ** alpha` form rather than GNMT's `((5 + n) / 6) ** alpha`.
    `length_penalty=0` ranks by total log-probability, which favours short outputs; larger
    values favour longer ones.

    Each step extends every live beam by every token. A candidate ending in a token of
    `stop_ids` is a finished hypothesis (the stop token is kept and counted in `n`); every one
    is scored, not only those that would rank in the beam. The `num_beams` best other
    candidates become the next live beams. After `max_new_tokens` steps the live beams are
    finished hypotheses too. The search ends early once no live beam can still beat a row's
    best finished hypothesis: log-probabilities only fall, so a live beam's best reachable
    score is its current sum divided by the largest length factor it can reach. Ties go to the
    hypothesis found first, then to the lower beam and the lower token id.

    With `num_beams >= V ** (max_new_tokens - 1)` the search is exhaustive. With stop ids,
    `num_beams=1` is not greedy decoding: the beam continues past a stop token and may find a
    longer hypothesis that scores better.

    The model runs under `torch.inference_mode()` in eval mode on `B * num_beams` sequences
    per step; training flags are restored afterwards. With `use_cache` and a model that has
    `new_cache`, each step feeds one new position per beam and the cache rows follow their
    parent beams (`cache.reorder`); past `block_size` each step prefills the cropped context
    again, as `generate` does. Without a cache each step recomputes the cropped context.

    Args:
        model: Maps ids `(B, T)` to logits `(B, T, V)`, or to an object with such a `.logits`.
        ids: Prompt token ids, an integer tensor of shape `(B, T)` with `T >= 1` (not a list:
            wrap one with `torch.tensor`), each in `[0, model.config.vocab_size)` when the
            model has that field.
        num_beams: Live hypotheses kept per row, an int >= 1.
        max_new_tokens: Maximum number of tokens to append, an int >= 0.
        length_penalty: Exponent `alpha` of the length normalisation, a finite number.
        stop_ids: Token ids in `[0, V)` that finish a hypothesis.
        block_size: Context length fed to the model; defaults to `model.config.context_limit`
            (else `model.config.block_size`) when the model has one, else the whole sequence.
        pad_id: Fill after a row's best hypothesis when it is shorter than the longest one.
            It only fills the output, so any int that `ids`' dtype holds will do (-1 marks
            the padding unmistakably).
        use_cache: Use the model's KV cache when it has `new_cache`; False recomputes the
            cropped context at every step.

    Returns:
        `(sequences, scores)`: the best hypothesis per row after its prompt, `(B, T + n)` with
        `n` the longest best hypothesis's length, padded with `pad_id`; and its score `(B,)`
        in at least float32 (0 for every row when `max_new_tokens=0`).

    Every argument is checked as `generate` checks it, before the first step. `V` is
    `model.config.vocab_size` when the model has it; otherwise the prompt's ids are not
    range-checked and the stop ids are checked against the logits' width at the first step.

    Raises:
        ValueError: If `ids` is not a 2-D integer tensor with at least one column or holds an
            id outside `[0, V)`, a stop id is outside `[0, V)`, or another argument has the
            wrong type or is out of range (the message names the parameter and the value),
            or the `(B, max_new_tokens)` buffer of the best hypotheses cannot be allocated.

    Example:
        >>> model = torch.nn.Embedding(6, 6)
        >>> out, scores = beam_search(model, torch.tensor([[1], [2]]), 4, 5, stop_ids=[0])
        >>> out.shape[0], bool((scores <= 0).all())
        (2, True)
    """
    where = "beam_search"
    vocab_size = _vocab_size(model)  # None: stop ids checked against the logits' width
    _check_prompt(ids, where, vocab_size)
    num_beams = _check_int(where, "num_beams", num_beams, 1)
    max_new_tokens = _check_int(where, "max_new_tokens", max_new_tokens, 0)
    length_penalty = _check_real(
        where, "length_penalty", length_penalty, "a finite number", math.isfinite
    )
    block_size = _resolve_block_size(model, block_size, where)
    stop_tokens = _token_ids(where, "stop_ids", stop_ids, vocab_size)
    pad_id = _check_fill(pad_id, ids.dtype)
    stops = sorted(set(stop_tokens))
    B, T, K, N = ids.size(0), ids.size(1), num_beams, max_new_tokens
    if N == 0:
        return ids.clone(), torch.zeros(B, device=ids.device)

    rows = torch.arange(B, device=ids.device)
    stop_index = torch.tensor(stops, dtype=torch.long, device=ids.device)  # (S,)
    beams = ids[:, None, :].expand(B, K, T)  # (B, K, T + step), one copy of the prompt per beam
    # Only beam 0 is live at first, so the first step expands a single copy of the prompt. The
    # scores start in float32 and follow the log-probabilities to float64 if the model is.
    beam_logp = torch.full((B, K), -math.inf, device=ids.device)
    beam_logp[:, 0] = 0.0
    best_score = torch.full((B,), -math.inf, device=ids.device)
    best_tokens = _output_buffer(where, N, (B, N), ids, fill=pad_id)  # (B, N)
    best_length = torch.zeros(B, dtype=torch.long, device=ids.device)
    with _inference(model):
        next_logits = _Stepper(
            model,
            block_size,
            "beam_search",
            use_cache=use_cache,
            batch_size=B * K,
            max_length=T + N,
        )
        for step in range(N):
            length = step + 1  # generated tokens once this step's token is appended
            logits = next_logits(beams.reshape(B * K, T + step))  # (B * K, V)
            V = logits.size(-1)
            logp = torch.log_softmax(logits, dim=-1).view(B, K, V)
            if vocab_size is None:  # no config.vocab_size: check the stop ids against V, once
                vocab_size = V
                _token_ids(where, "stop_ids", stop_tokens, V)
            total = beam_logp[:, :, None] + logp  # (B, K, V)

            if stops:
                # Every candidate that ends in a stop token is a finished hypothesis.
                stopped = total.index_select(-1, stop_index) / length**length_penalty  # (B, K, S)
                score, flat = stopped.view(B, -1).max(dim=-1)  # (B,): first maximum on ties
                parent, token = flat // len(stops), stop_index[flat % len(stops)]
                tokens = _padded(beams[rows, parent, T:], token, N, pad_id)  # (B, N)
                better = score > best_score
                best_score = torch.where(better, score, best_score)
                best_tokens = torch.where(better[:, None], tokens, best_tokens)
                best_length = torch.where(better, length, best_length)
                total = total.index_fill(-1, stop_index, -math.inf)

            # The K best continuing candidates; a stable sort breaks ties by beam, then token.
            values, flat = torch.sort(total.view(B, K * V), dim=-1, descending=True, stable=True)
            beam_logp, flat = values[:, :K], flat[:, :K]  # (B, K)
            parent, token = flat // V, flat % V
            history = beams.gather(1, parent[:, :, None].expand(B, K, T + step))
            beams = torch.cat([history, token[:, :, None].to(ids.dtype)], dim=2)
            next_logits.reorder((rows[:, None] * K + parent).view(B * K))  # cache rows follow

            if stops and length < N:
                # Sums only fall; for alpha > 0 the largest divisor is N ** alpha, otherwise
                # the current length's.
                reach = (N if length_penalty > 0 else length) ** length_penalty
                if bool((beam_logp.amax(dim=-1) / reach <= best_score).all()):
                    break
        else:
            # All steps ran: the live beams are finished hypotheses of length N.
            score, parent = (beam_logp / N**length_penalty).max(dim=-1)  # (B,)
            better = score > best_score
            best_score = torch.where(better, score, best_score)
            best_tokens = torch.where(better[:, None], beams[rows, parent, T:], best_tokens)
            best_length = torch.where(better, N, best_length)

    n = int(best_length.max())
    # Functional ops outside inference mode turn the inference tensors into ordinary ones.
    return torch.cat([ids, best_tokens[:, :n]], dim=1), best_score.clone()


def _check_fill(pad_id: object, dtype: torch.dtype) -> int:
    """`pad_id` as an int, after checking it is an int that `dtype` can hold."""
    info = torch.iinfo(dtype)
    number = _as_int(pad_id)
    if number is None or not info.min <= number <= info.max:
        raise ValueError(
            f"beam_search: pad_id must be an int in [{info.min}, {info.max}] (it fills the"
            f" output, of ids' dtype {dtype}), got {pad_id!r}"
        )
    return number


def _padded(prefix: Tensor, token: Tensor, width: int, pad_id: int) -> Tensor:
    """Rows `prefix (B, L)` followed by `token (B,)`, padded with `pad_id` to `(B, width)`."""
    out = torch.full((prefix.size(0), width), pad_id, dtype=prefix.dtype, device=prefix.device)
    out[:, : prefix.size(1)] = prefix
    out[:, prefix.size(1)] = token.to(prefix.dtype)
    return out

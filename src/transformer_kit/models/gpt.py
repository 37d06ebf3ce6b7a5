"""`GPT`: a GPT-2 style decoder-only transformer built from a `GPTConfig`.

The model maps token ids to next-token logits and, given targets, a loss. It knows nothing of
optimizers or sampling: `transformer_kit.sampling` and the trainer work on any ids -> logits module.
    >>> model = GPT(GPTConfig(vocab_size=65, n_layer=1, d_model=32))
    >>> model(torch.zeros(2, 8, dtype=torch.long)).logits.shape
    torch.Size([2, 8, 65])

Parts live beside this file (layers.py, attention.py, positional.py, cache.py); here they are
composed: Block -> GPT. Each architecture choice is made in one `_make_*` function.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from transformer_kit.models.attention import CausalSelfAttention
from transformer_kit.models.cache import KVCache
from transformer_kit.models.config import GPTConfig
from transformer_kit.models.layers import _make_mlp, _make_norm
from transformer_kit.models.positional import RopeTables, SinusoidalPositions, rope_tables

__all__ = ["Block", "GPT", "Output"]

# Shapes: B batch, T time, C d_model, V vocab.

# GPT-1 (Radford et al. 2018, sec. 4.1) and openai/gpt-2's model.py: weights ~ N(0, 0.02).
_INIT_STD = 0.02
# Parameters that write into the residual stream and get GPT-2's depth-scaled init.
_RESIDUAL_WEIGHTS = ("attn.proj.weight", "mlp.proj.weight")


class Output(NamedTuple):
    """What `GPT.forward` returns."""

    logits: Tensor
    """Next-token scores, (B, T, V); float32, or the autocast dtype under autocast."""
    loss: Tensor | None
    """Mean cross-entropy over targets != pad_id (a 0-d tensor), or None without targets."""


class Block(nn.Module):
    """One pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)).

    Pre-norm (GPT-2, sec. 2.3) keeps the residual stream an identity path, which trains
    stably without warmup tricks (Xiong et al. 2020).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.norm_1 = _make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.norm_2 = _make_norm(config)
        self.mlp = _make_mlp(config)

    def forward(
        self,
        x: Tensor,
        *,
        start: int = 0,
        kv: tuple[Tensor, Tensor] | None = None,
        positions: Tensor | None = None,
        key_mask: Tensor | None = None,
        rope: RopeTables | None = None,
    ) -> Tensor:
        """Map (B, T, C) to (B, T, C); the keywords as in `CausalSelfAttention.forward`."""
        attended = self.attn(
            self.norm_1(x), start=start, kv=kv, positions=positions, key_mask=key_mask, rope=rope
        )
        x = x + attended
        return x + self.mlp(self.norm_2(x))


def _make_position_embedding(config: GPTConfig) -> nn.Module | None:
    """The absolute position embedding added to the tokens, or None for RoPE and ALiBi.

    Relative schemes act inside attention instead (see `CausalSelfAttention`).
    """
    if config.position == "learned":
        return nn.Embedding(config.block_size, config.d_model)
    if config.position == "sinusoidal":
        return SinusoidalPositions(config.d_model)
    return None


class GPT(nn.Module):
    """GPT-2 style language model: embeddings, `n_layer` pre-norm blocks, final norm, linear head.

    The head has no bias (as in GPT-2), whatever `config.bias` says; with `tie_weights` its
    weight is the token embedding matrix.

    Args:
        config: the architecture.
        position_features: an optional module that adds domain position features (for example
            the position within a musical bar) to the embeddings. It is called as
            `position_features(ids, positions)` with `ids` (B, T) and their absolute positions
            (T,) int64 ((B, T), per row, when `forward` gets a padding `attention_mask`), and
            returns (B, T, C), which is added to the token (+ position) embedding. A module
            whose feature depends on earlier tokens (the position within a bar depends on every
            time step since the last bar line) sets the class attribute `uses_history = True`:
            it then gets the whole history `ids` (B, S), the T new tokens last, which with a KV
            cache are the ids in its slots (`cache.ids`: a rolling cache holds its window
            only), and returns the features of the last T tokens only. It becomes the
            submodule `position_features`: it is trained, saved in the state dict and
            initialised like the model's own Linear / Embedding layers.

    Example:
        >>> model = GPT(GPTConfig(vocab_size=10, n_layer=1, d_model=16, n_head=2, block_size=8))
        >>> ids = torch.tensor([[1, 2, 3]])
        >>> out = model(ids, targets=torch.tensor([[2, 3, 0]]))
        >>> out.logits.shape, out.loss.shape
        (torch.Size([1, 3, 10]), torch.Size([]))
    """

    def __init__(self, config: GPTConfig, *, position_features: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = _make_position_embedding(config)
        self.position_features = position_features
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = _make_norm(config)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_weights:
            # Press & Wolf 2017, "Using the Output Embedding to Improve Language Models".
            self.head.weight = self.tok_emb.weight

        self.apply(_init_weights)
        # GPT-2 (Radford et al. 2019, sec. 2.3): scale the weights of residual layers by
        # 1/sqrt(N), N = number of residual layers = 2 per block (attention and MLP), so the
        # residual stream's variance does not grow with depth. With zero_init_output they start
        # at zero instead, so every block starts as the identity (Zhang et al. 2019, Fixup).
        residual_std = _INIT_STD / math.sqrt(2 * config.n_layer)
        for name, param in self.named_parameters():
            # Every attention or MLP variant names its residual output Linear `proj`.
            if not name.endswith(_RESIDUAL_WEIGHTS):
                continue
            if config.zero_init_output:
                nn.init.zeros_(param)
            else:
                nn.init.normal_(param, mean=0.0, std=residual_std)

    def forward(
        self,
        ids: Tensor,
        targets: Tensor | None = None,
        *,
        cache: KVCache | None = None,
        attention_mask: Tensor | None = None,
    ) -> Output:
        """Compute next-token logits and, given targets, the loss.

        Args:
            ids: token ids, (B, T) int64, every id in [0, vocab_size). Without a cache they sit
                in slots 0 .. T - 1; with one, in slots `cache.length .. cache.length + T - 1`.
            targets: the next token at each position, (B, T) int64; positions where the target
                is `config.pad_id` are left out of the loss.
            cache: keys and values of the earlier slots, from `new_cache`. The new tokens
                attend to them and to each other causally; their keys and values are written
                into the cache, whose `length` then grows by T. A rolling cache first drops
                its oldest slots to make room; when the T tokens overflow it, they are fed one
                call per token past the free slots, so each sees its own last `max_length`
                positions (sliding-window attention, whatever the split into calls).
            attention_mask: which slots hold real tokens, (B, S) bool or 0/1, covering every
                slot seen so far: S = `cache.length + T` with a cache, T without (the caller
                keeps the whole mask and passes it again each call). Padded slots (False) are
                masked out of attention, and a row's positions count real tokens only, so with
                left padding each row starts at position 0 at its first real token. Logits at
                padded slots are meaningless. None (or all True) means no padding and keeps the
                fused causal attention path.

        Returns:
            `Output(logits, loss)`: logits (B, T, V); loss a 0-d tensor, or None without targets.
            When every target is pad_id the loss is NaN (0 / 0), as in `F.cross_entropy`.

        Raises:
            ValueError: if `ids` is not 2-D, `targets` or `attention_mask` has another shape,
                the cache does not fit the model or batch, or the last slot would pass
                `config.context_limit` (block_size, or max_position for rope / alibi) or the
                `max_length` of a cache that is not rolling, or `attention_mask` is given with
                a rolling cache that has shifted or must shift.
        """
        if ids.ndim != 2:
            raise ValueError(f"GPT.forward: ids must be 2-D (B, T), got shape {tuple(ids.shape)}")
        B, T = ids.shape
        if targets is not None and targets.shape != ids.shape:
            raise ValueError(
                f"GPT.forward: targets must have the shape of ids {tuple(ids.shape)}, "
                f"got {tuple(targets.shape)}"
            )
        start = 0 if cache is None else cache.length
        offset = 0 if cache is None else cache.offset
        self._check_length(start, T, cache, B)
        # A rolling cache drops its oldest positions to make room for the new tokens.
        overflow = 0 if cache is None or not cache.rolling else start + T - cache.max_length
        if attention_mask is not None and (offset or overflow > 0):
            raise ValueError(
                "GPT.forward: attention_mask cannot be used with a shifted cache "
                f"(offset {offset}, {max(overflow, 0)} more to drop): its columns would no "
                "longer match the cache's slots"
            )
        if cache is not None and overflow > 0 and T > 1:
            # Each new token must see its own last max_length positions, which one shift for
            # all T cannot give: fill the free slots at once, then feed one token per call.
            return self._feed_rolling(ids, targets, cache)
        if cache is not None and overflow > 0:
            cache.shift(overflow)
            start, offset = cache.length, cache.offset
        key_mask = _key_mask(attention_mask, B, start + T)  # (B, S) bool, or None

        if key_mask is None:
            # Slot i of the cache holds position offset + i.
            positions = torch.arange(offset + start, offset + start + T, device=ids.device)
        else:
            # Position = real tokens before this slot; padded slots get 0 (their output is unused).
            counts = key_mask.long().cumsum(dim=1)  # (B, S)
            positions = (counts[:, start:] - 1).clamp(min=0)  # (B, T)
        x = self.tok_emb(ids)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions).to(x.dtype)  # (T, C) or (B, T, C)
        if cache is not None:
            cache.ids[:, start : start + T] = ids
        if self.position_features is not None:
            history = ids
            if cache is not None and getattr(self.position_features, "uses_history", False):
                history = cache.ids[:, : start + T]  # (B, S)
            x = x + self.position_features(history, positions)  # (B, T, C)
        if self.training:  # dropout is the identity in eval mode; skip its call per token
            x = self.drop(x)
        recompute = self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()
        # RoPE's cosines and sines, once for every layer: per row when padded, else per slot.
        rope = (
            rope_tables(positions, self.config.head_dim) if self.config.position == "rope" else None
        )
        for i, block in enumerate(self.blocks):
            if cache is not None:
                x = block(x, start=start, kv=cache.layer(i), key_mask=key_mask, rope=rope)
            elif recompute:
                x = checkpoint(block, x, key_mask=key_mask, rope=rope, use_reentrant=False)
            else:
                x = block(x, key_mask=key_mask, rope=rope)  # (B, T, C)
        if cache is not None:
            cache.advance(T)
        logits = self.head(self.norm_f(x))  # (B, T, V)
        return Output(logits, None if targets is None else self._loss(logits, targets))

    def _loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy of logits (B, T, V) against targets (B, T), pad_id left out."""
        # -100 is F.cross_entropy's default ignore_index; no valid target id equals it.
        ignore_index = -100 if self.config.pad_id is None else self.config.pad_id
        return F.cross_entropy(
            logits.reshape(-1, logits.size(-1)),  # (B*T, V)
            targets.reshape(-1),  # (B*T,)
            ignore_index=ignore_index,
        )

    def _feed_rolling(self, ids: Tensor, targets: Tensor | None, cache: KVCache) -> Output:
        """Feed (B, T) ids to a rolling cache they overflow: what fits at once, then 1 by 1."""
        free = cache.max_length - cache.length
        pieces = [ids[:, :free]] if free > 0 else []
        pieces += list(ids[:, free:].split(1, dim=1))  # (B, 1) each
        logits = torch.cat([self(piece, cache=cache).logits for piece in pieces], dim=1)
        return Output(logits, None if targets is None else self._loss(logits, targets))

    def _check_length(self, start: int, T: int, cache: KVCache | None, B: int) -> None:
        config = self.config
        limit_name = "block_size" if config.max_position is None else "max_position"
        limit = config.context_limit
        if cache is None:
            if T > limit:
                raise ValueError(f"GPT.forward: sequence length {T} exceeds {limit_name} {limit}")
            return
        if cache.n_layer != config.n_layer or cache.batch_size != B:
            raise ValueError(
                f"GPT.forward: cache has {cache.n_layer} layers and batch size "
                f"{cache.batch_size}, but the model has n_layer {config.n_layer} and ids have "
                f"batch size {B}; make it with model.new_cache({B})"
            )
        end = cache.fed + T  # the position after the new tokens
        if end > limit:
            hint = (
                "; rope and alibi can run further if max_position is set"
                if config.position in ("rope", "alibi")
                else f"; position {config.position!r} cannot extrapolate, so slide the window"
                " and rebuild the cache"
            )
            raise ValueError(
                f"GPT.forward: position {cache.fed} + {T} new tokens = {end} exceeds "
                f"{limit_name} {limit}{hint}"
            )
        if not cache.rolling and start + T > cache.max_length:  # a rolling one makes room
            raise ValueError(
                f"GPT.forward: cache length {start} + {T} new tokens = {start + T} exceeds the "
                f"cache's max_length {cache.max_length}"
            )

    def new_cache(
        self, batch_size: int, max_length: int | None = None, *, rolling: bool = False
    ) -> KVCache:
        """An empty `KVCache` for `batch_size` rows, in the dtype and on the device of the model.

        Args:
            batch_size: rows of every `ids` fed with this cache.
            max_length: positions to allocate (prompt + new tokens); None means
                `config.context_limit`, or `config.block_size` with `rolling`. Allocate only
                what you need when max_position is large.
            rolling: keep only the last `max_length` positions, dropping the oldest as new
                ones come (`KVCache.shift`), so decoding can run up to `config.context_limit`
                while attending to at most `max_length` tokens: the length the model was
                trained on, by default. Needs relative positions (rope or alibi), which do not
                change for the tokens kept.

        Raises:
            ValueError: if `max_length` is not in [1, config.context_limit], or `rolling` is
                asked of a model with absolute positions.

        Example:
            >>> model = GPT(GPTConfig(vocab_size=10, n_layer=1, d_model=16, n_head=2)).eval()
            >>> cache = model.new_cache(1, 8)
            >>> with torch.no_grad():
            ...     first = model(torch.tensor([[1, 2, 3]]), cache=cache).logits  # prefill
            ...     step = model(torch.tensor([[4]]), cache=cache).logits  # position 3 only
            >>> cache.length, step.shape
            (4, torch.Size([1, 1, 10]))
        """
        config = self.config
        if rolling and config.position not in ("rope", "alibi"):
            raise ValueError(
                f"GPT.new_cache: rolling needs relative positions (rope or alibi), got position "
                f"{config.position!r}: absolute positions past block_size do not exist"
            )
        limit = config.context_limit
        length = max_length
        if length is None:
            length = min(config.block_size, limit) if rolling else limit
        if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= limit:
            raise ValueError(
                f"GPT.new_cache: max_length must be None or an int in [1, {limit}] "
                f"(config.context_limit), got {max_length!r}"
            )
        weight = self.tok_emb.weight
        return KVCache(
            n_layer=config.n_layer,
            batch_size=batch_size,
            n_kv_head=config.kv_heads,
            head_dim=config.head_dim,
            max_length=length,
            dtype=weight.dtype,
            device=weight.device,
            rolling=rolling,
        )

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        """Count parameters, each shared (tied) tensor once.

        Args:
            exclude_embeddings: leave out the position embedding and the position features, as
                nanoGPT leaves out its position table. The token embedding stays counted, tied
                or not: tied, it is also the output head.
        """
        # parameters() yields a shared tensor once, so the tied head is not double counted.
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            for module in (self.pos_emb, self.position_features):
                if module is not None:
                    n -= sum(p.numel() for p in module.parameters())
        return n

    def parameter_breakdown(self) -> dict[str, int]:
        """Parameters per part; the values sum to `num_parameters()`.

        Returns:
            `{"embeddings", "attention", "mlp", "norms", "head"}` counts. Norms hold every norm
            weight and bias of the blocks (qk-norm too) and the final norm; head is 0 when tied
            (its matrix is the token embedding); embeddings hold everything else: the token and
            position tables and the position features.
        """
        counts = dict.fromkeys(("embeddings", "attention", "mlp", "norms", "head"), 0)
        # named_parameters() yields a tied tensor once, under its first name (tok_emb.weight).
        for name, param in self.named_parameters():
            owner = name.rpartition(".")[0]  # the module holding the parameter
            if name.startswith("blocks.") and "norm" in owner.rpartition(".")[2]:
                part = "norms"
            elif owner == "norm_f":
                part = "norms"
            elif ".attn." in name:
                part = "attention"
            elif ".mlp." in name:
                part = "mlp"
            elif name.startswith("head."):
                part = "head"
            else:
                part = "embeddings"
            counts[part] += param.numel()
        return counts

    def flops_per_token(self) -> float:
        """Training FLOPs (forward + backward) per token: 6 N + 12 L C T.

        PaLM (Chowdhery et al. 2022, appendix B): N counts the matmul weights, here every Linear
        of the blocks plus the output head (a real matmul even when tied; the embedding lookup
        is a gather and is left out). 12 L C T is the attention score and value matmuls at
        context T = block_size, forward and backward, as in Chinchilla (Hoffmann et al. 2022,
        appendix F); GQA shares keys but not this cost, and the causal half is counted too.
        """
        weights = sum(m.weight.numel() for m in self.blocks.modules() if isinstance(m, nn.Linear))
        N = weights + self.head.weight.numel()
        config = self.config
        return float(6 * N + 12 * config.n_layer * config.d_model * config.block_size)


def _key_mask(attention_mask: Tensor | None, B: int, S: int) -> Tensor | None:
    """`attention_mask` checked and as bool (B, S); None when absent or when nothing is padded."""
    if attention_mask is None:
        return None
    if tuple(attention_mask.shape) != (B, S):
        raise ValueError(
            f"GPT.forward: attention_mask must have shape (B, cache length + T) = {(B, S)}, "
            f"got {tuple(attention_mask.shape)}"
        )
    key_mask = attention_mask.to(device=attention_mask.device, dtype=torch.bool)
    # No padding: drop the mask so attention keeps its fused causal path; the result is the same.
    return None if bool(key_mask.all()) else key_mask


def _init_weights(module: nn.Module) -> None:
    # N(0, _INIT_STD) weights and zero biases, as openai/gpt-2's model.py. LayerNorm and RMSNorm
    # keep PyTorch's default of weight 1, bias 0.
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=_INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=_INIT_STD)

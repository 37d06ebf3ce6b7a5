"""`CausalSelfAttention`: multi-head, grouped-query or multi-query causal attention.

One module covers every `GPTConfig` attention variant: `n_kv_head` key/value heads shared by
groups of query heads, optional per-head qk-norm, RoPE rotation or ALiBi biases, attention
dropout, and incremental decoding against a `KVCache` layer.
    >>> attn = CausalSelfAttention(GPTConfig(vocab_size=8, d_model=16, n_head=4, n_kv_head=2))
    >>> attn(torch.zeros(1, 3, 16)).shape
    torch.Size([1, 3, 16])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_kit.models.config import GPTConfig
from transformer_kit.models.layers import _make_norm
from transformer_kit.models.positional import (
    RopeTables,
    alibi_bias,
    alibi_slopes,
    rope_tables,
    rotate,
)

__all__ = ["CausalSelfAttention"]

_LOW_PRECISION = (torch.bfloat16, torch.float16)
# Up to this many positions, a float32 CPU training step computes causal attention as batched
# matmuls (`_matmul_attention`) instead of SDPA: torch 2.13's fused CPU kernel has a fixed cost
# per call that its backward pays again, and on short sequences that outweighs the (B, H, T, T)
# scores it saves. Measured in docs/benchmarks.md; beyond this length the fused kernel wins.
_MATMUL_ATTENTION_MAX_T = 128

# Shapes: B batch, T new positions, S key positions (cached + new), C d_model, H query heads,
# K key/value heads (H = G * K), D head dim (C = H * D).


class CausalSelfAttention(nn.Module):
    """Self-attention in which the token at absolute position p attends to positions <= p.

    `qkv` makes queries for H heads and keys and values for K heads in one matmul (C -> (H + 2K) D);
    query head h reads key/value head h // (H / K) (Ainslie et al. 2023). `proj` writes back into
    the residual stream.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.kv_heads
        self.head_dim = config.head_dim
        qkv_width = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        self.qkv = nn.Linear(config.d_model, qkv_width, bias=config.bias)
        # Output projection back into the residual stream; GPT scales its init (see GPT.__init__).
        self.proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.attn_dropout = config.attn_dropout
        # Dehghani et al. 2023 (ViT-22B, sec. 2): normalising q and k bounds the attention logits.
        self.q_norm = _make_norm(config, config.head_dim) if config.qk_norm else None
        self.k_norm = _make_norm(config, config.head_dim) if config.qk_norm else None
        # The relative position schemes act here; learned and sinusoidal ones act in GPT.
        self.rope = config.position == "rope"
        self.alibi = config.position == "alibi"

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
        """Map (B, T, C) to (B, T, C).

        Args:
            x: the normalised residual stream at slots `start .. start + T - 1`.
            start: slot of the first row of `x` (the cache length).
            kv: one layer's cache buffers (keys, values), each (B, K, L, D). The new keys and
                values are written at `start .. start + T - 1`, and attention reads slots
                `0 .. start + T - 1`. None means no cache; `start` must then be 0.
            positions: per-row positions (B, T) for RoPE, used with left padding; None means
                the slots themselves.
            key_mask: (B, S) bool, False at padded key slots, which no query attends to (a
                padded query attends to itself alone, so its row stays finite). None means
                every key is real and keeps the mask-free SDPA path.
            rope: `rope_tables` for these rows, which `GPT` computes once for all layers; when
                given, `positions` is not read. None means computed here from `positions` (or
                the slots). Ignored without RoPE.
        """
        B, T, _ = x.shape
        H, K, D = self.n_head, self.n_kv_head, self.head_dim
        # One view and one transpose for all three, then a split along the head axis: fewer small
        # ops than splitting first, which counts when decoding one token at a time.
        qkv = self.qkv(x).view(B, T, H + 2 * K, D).transpose(1, 2)  # (B, H + 2K, T, D)
        tables = rope if self.rope else None
        if self.rope and tables is None:
            slots = (
                torch.arange(start, start + T, device=x.device) if positions is None else positions
            )
            tables = rope_tables(slots, D)  # (T, D) or (B, 1, T, D) each
        if tables is not None and self.q_norm is None:
            # Queries and keys are neighbouring heads of qkv: one rotation turns them both.
            qk, v = qkv.split([H + K, K], dim=1)  # (B, H + K, T, D), (B, K, T, D)
            q, k = rotate(qk, tables).split([H, K], dim=1)
        else:
            q, k, v = qkv.split([H, K, K], dim=1)  # (B, H, T, D), (B, K, T, D), (B, K, T, D)
            if self.q_norm is not None and self.k_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)  # over D, per head and position
            if tables is not None:
                q, k = rotate(q, tables), rotate(k, tables)
        if kv is not None:
            keys, values = kv
            keys[:, :, start : start + T] = k
            values[:, :, start : start + T] = v
            k = keys[:, :, : start + T]  # (B, K, S, D)
            v = values[:, :, : start + T]  # (B, K, S, D)

        dtype = q.dtype
        # torch 2.13's CPU attention kernels are slower in bfloat16 / float16 than in float32
        # (forward + backward 5x slower at B 12, H 4, T 64, D 32; see docs/benchmarks.md), so on
        # the CPU attention runs in float32 and only its output goes back to the low precision.
        upcast = q.device.type == "cpu" and dtype in _LOW_PRECISION
        if upcast:
            q = q.float()
        if k.dtype != q.dtype:
            # Under autocast the cache stays in the model's dtype: convert it once, if at all.
            k, v = k.to(q.dtype), v.to(q.dtype)
        mask = None  # SDPA's is_causal without a cache; no mask for one new token
        if self.alibi or key_mask is not None or (start > 0 and T > 1):
            mask = self._mask(start, T, k.shape[2], q, key_mask)
        if upcast:
            with torch.autocast("cpu", enabled=False):  # autocast would cast q, k, v back down
                y = self._attend(q, k, v, mask, start, T).to(dtype)
        else:
            y = self._attend(q, k, v, mask, start, T)  # (B, H, T, D)
        y = self.proj(y.transpose(1, 2).reshape(B, T, H * D))  # (B, T, C)
        # In eval mode dropout is the identity; skipping the call saves its overhead per token.
        return self.dropout(y) if self.training else y

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, start: int, T: int
    ) -> Tensor:
        """softmax(q k^T / sqrt(D) + mask) v, (B, H, T, D); causal in SDPA if mask is None."""
        if (
            mask is None
            and start == 0
            and T <= _MATMUL_ATTENTION_MAX_T
            and q.requires_grad
            and torch.is_grad_enabled()
            and q.dtype == torch.float32
            and q.device.type == "cpu"
            and self.n_kv_head == self.n_head
            and not (self.training and self.attn_dropout > 0)
            and not torch.is_autocast_enabled("cpu")
        ):
            return _matmul_attention(q, k, v)
        return F.scaled_dot_product_attention(  # scales by 1/sqrt(D) (Vaswani et al. 2017)
            q,
            k,
            v,
            attn_mask=mask,
            # is_causal masks as if query i sat at key position i: right only when T == S.
            is_causal=mask is None and start == 0 and T > 1,
            dropout_p=self.attn_dropout if self.training else 0.0,
            enable_gqa=self.n_kv_head != self.n_head,
        )

    def _mask(self, start: int, T: int, S: int, q: Tensor, key_mask: Tensor | None) -> Tensor:
        """The mask for T queries at slots `start ..` over keys 0 .. S - 1 (dtype, device of q).

        Without `key_mask`: (T, S) bool, or (1, H, T, S) biases for ALiBi. With it the mask is
        per row: (B, 1, T, S) bool, or (B, H, T, S) biases for ALiBi.
        """
        slots = torch.arange(start, start + T, device=q.device)  # (T,)
        key_slots = torch.arange(S, device=q.device)  # (S,)
        bias = None
        if self.alibi:
            slopes = alibi_slopes(self.n_head, device=q.device)  # (H,)
            bias = alibi_bias(slopes, slots, key_slots).to(q.dtype)  # (H, T, S), causal too
            if key_mask is None:
                # 4-D: torch 2.13's CPU flash kernel takes a (1, H, T, S) mask but sends a 3-D
                # one to the slower math kernel (checked with torch.profiler).
                return bias[None]  # (1, H, T, S)
        causal = key_slots[None, :] <= slots[:, None]  # (T, S), True = attend
        if key_mask is None:
            return causal
        diagonal = key_slots[None, :] == slots[:, None]  # (T, S)
        # A padded query keeps its own key: a row with nothing to attend to would be NaN, and NaN
        # values at padded slots would leak through the zero weights of later rows.
        allowed = causal & (key_mask[:, None, :] | diagonal)  # (B, T, S)
        if bias is not None:
            # Left padding leaves real tokens contiguous, so slot distances are the true ones.
            return bias[None].masked_fill(~allowed[:, None], float("-inf"))  # (B, H, T, S)
        return allowed[:, None]  # (B, 1, T, S) bool, True = attend


def _matmul_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal softmax(q k^T / sqrt(D)) v for (B, H, T, D) q, k, v, as three batched kernels.

    The scale and the causal mask ride in one `baddbmm`, so forward and backward are a few
    matmuls and one softmax. The (B H, T, T) weights are materialised and kept for the
    backward, so `_attend` uses this on short sequences only (docs/models.md).
    """
    B, H, T, D = q.shape
    future = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu_(1)
    scores = torch.baddbmm(  # (B H, T, T): q k^T / sqrt(D), -inf above the diagonal
        future.expand(B * H, T, T),
        q.reshape(B * H, T, D),
        k.reshape(B * H, T, D).transpose(1, 2),
        alpha=D**-0.5,
    )
    return torch.bmm(scores.softmax(dim=-1), v.reshape(B * H, T, D)).view(B, H, T, D)

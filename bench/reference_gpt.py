"""A deliberately plain reference GPT: the yardstick the benchmarks measure the kit against.

Same architecture as `transformer_kit.models.GPT` with its defaults (pre-norm LayerNorm, exact
GELU MLP, learned positions, head tied to the token embedding), written the textbook way: separate
q/k/v Linears, attention as `softmax(q k^T / sqrt(D) + causal mask) v` by hand, and generation
that recomputes the whole (cropped) context for every new token, with no cache.
    >>> model = ReferenceGPT(vocab_size=10, block_size=8, n_layer=1, n_head=2, d_model=16)
    >>> model(torch.zeros(2, 3, dtype=torch.long))[0].shape
    torch.Size([2, 3, 10])

`load_kit_state_dict` copies a kit GPT's weights in (splitting its fused qkv), so both models
compute the same function; tests/test_bench.py checks that they do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ReferenceGPT", "generate_recompute", "load_kit_state_dict"]

# Shapes: B batch, T time, C d_model, H heads, D head dim (C = H * D), V vocab.


class _Attention(nn.Module):
    def __init__(self, n_head: int, d_model: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        H, D = self.n_head, C // self.n_head
        q = self.q(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        v = self.v(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, T)
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)  # (T, T)
        scores = scores.masked_fill(future, float("-inf"))
        y = scores.softmax(dim=-1) @ v  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.proj(y)


class _Block(nn.Module):
    def __init__(self, n_head: int, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.norm_1 = nn.LayerNorm(d_model)
        self.attn = _Attention(n_head, d_model)
        self.norm_2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, d_ff)
        self.proj = nn.Linear(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm_1(x))
        return x + self.proj(F.gelu(self.fc(self.norm_2(x))))


class ReferenceGPT(nn.Module):
    """Plain GPT-2 style model; `forward(ids, targets)` returns `(logits, loss or None)`.

    Every target counts in the loss (no padding id); weights are N(0, 0.02) with zero biases.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        block_size: int,
        n_layer: int,
        n_head: int,
        d_model: int,
        d_ff: int | None = None,
    ) -> None:
        super().__init__()
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(block_size, d_model)
        ff = 4 * d_model if d_ff is None else d_ff
        self.blocks = nn.ModuleList(_Block(n_head, d_model, ff) for _ in range(n_layer))
        self.norm_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied (Press & Wolf, 2017)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, ids: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        B, T = ids.shape
        positions = torch.arange(T, device=ids.device)  # (T,)
        x = self.tok_emb(ids) + self.pos_emb(positions)  # (B, T, C)
        for block in self.blocks:
            x = block(x)  # (B, T, C)
        logits = self.head(self.norm_f(x))  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(B * T, -1), targets.reshape(B * T))
        return logits, loss


@torch.no_grad()
def generate_recompute(model: ReferenceGPT, ids: Tensor, max_new_tokens: int) -> Tensor:
    """Greedy decoding that reruns the model on the last `block_size` tokens at every step."""
    model.eval()
    out = ids
    for _ in range(max_new_tokens):
        logits, _ = model(out[:, -model.block_size :])  # (B, T, V)
        token = logits[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
        out = torch.cat([out, token], dim=1)
    return out


def load_kit_state_dict(model: ReferenceGPT, state: Mapping[str, Tensor]) -> None:
    """Copy the weights of a kit `GPT` (default variants, bias on, tied head) into `model`.

    The kit's fused `attn.qkv` (rows: queries, keys, values) is split into `q`, `k`, `v`, and
    `mlp.fc` / `mlp.proj` become the block's `fc` / `proj`.
    """
    mapped: dict[str, Tensor] = {}
    for name, tensor in state.items():
        if name.endswith(".attn.qkv.weight") or name.endswith(".attn.qkv.bias"):
            prefix, kind = name.rsplit(".qkv.", 1)
            for part, chunk in zip("qkv", tensor.chunk(3, dim=0), strict=True):
                mapped[f"{prefix}.{part}.{kind}"] = chunk
        else:
            mapped[name.replace(".mlp.", ".")] = tensor
    model.load_state_dict(mapped, strict=True)

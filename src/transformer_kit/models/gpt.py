"""`GPT`: a GPT-2 style decoder-only transformer built from a `GPTConfig`.

The model maps token ids to next-token logits and, given targets, a loss. It knows nothing of
optimizers or sampling: `transformer_kit.sampling` and the trainer work on any ids -> logits module.
    >>> model = GPT(GPTConfig(vocab_size=65, n_layer=1, d_model=32))
    >>> model(torch.zeros(2, 8, dtype=torch.long)).logits.shape
    torch.Size([2, 8, 65])

Parts come first and `GPT` last: CausalSelfAttention -> MLP -> Block -> GPT. Each
architecture choice is made in one `_make_*` function, where later variants slot in.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_kit.models.config import GPTConfig

__all__ = ["Output", "CausalSelfAttention", "MLP", "Block", "GPT"]

# Shapes: B batch, T time, C d_model, H heads, D head dim (C = H * D), F ff_dim, V vocab.

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


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t attends to positions <= t."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        # One matmul makes q, k and v for every head: (C -> 3C).
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)
        # Output projection back into the residual stream; GPT scales its init (see GPT.__init__).
        self.proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, T, C) to (B, T, C)."""
        B, T, C = x.shape
        H = self.n_head
        D = C // H
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        v = v.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        # Scales by 1/sqrt(D) (Vaswani et al. 2017, sec. 3.2.1) and masks the future.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.dropout(self.proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward network: Linear(C, F) -> GELU -> Linear(F, C)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.ff_dim, bias=config.bias)
        # Exact (erf) GELU, as PyTorch defaults to; GPT-2 used the tanh approximation.
        self.act = nn.GELU()
        # Down projection into the residual stream; GPT scales its init (see GPT.__init__).
        self.proj = nn.Linear(config.ff_dim, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, T, C) to (B, T, C)."""
        return self.dropout(self.proj(self.act(self.fc(x))))


def _make_norm(config: GPTConfig) -> nn.Module:
    """The normalisation layer (the choice point for an RMSNorm variant)."""
    return nn.LayerNorm(config.d_model, bias=config.bias)


def _make_attention(config: GPTConfig) -> nn.Module:
    """The attention layer (the choice point for grouped-query attention)."""
    return CausalSelfAttention(config)


def _make_mlp(config: GPTConfig) -> nn.Module:
    """The feed-forward layer (the choice point for a SwiGLU variant)."""
    return MLP(config)


class Block(nn.Module):
    """One pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)).

    Pre-norm (GPT-2, sec. 2.3) keeps the residual stream an identity path, which trains
    stably without warmup tricks (Xiong et al. 2020).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.norm_1 = _make_norm(config)
        self.attn = _make_attention(config)
        self.norm_2 = _make_norm(config)
        self.mlp = _make_mlp(config)

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, T, C) to (B, T, C)."""
        x = x + self.attn(self.norm_1(x))
        return x + self.mlp(self.norm_2(x))


def _make_position_embedding(config: GPTConfig) -> nn.Module:
    """Absolute position embedding added to the tokens (the choice point for sinusoidal).

    Relative schemes (RoPE, ALiBi) act inside attention instead and will add nothing here.
    """
    return nn.Embedding(config.block_size, config.d_model)


class GPT(nn.Module):
    """GPT-2 style language model: embeddings, `n_layer` pre-norm blocks, final norm, linear head.

    The head has no bias (as in GPT-2), whatever `config.bias` says; with `tie_weights` its
    weight is the token embedding matrix.

    Example:
        >>> model = GPT(GPTConfig(vocab_size=10, n_layer=1, d_model=16, n_head=2, block_size=8))
        >>> ids = torch.tensor([[1, 2, 3]])
        >>> out = model(ids, targets=torch.tensor([[2, 3, 0]]))
        >>> out.logits.shape, out.loss.shape
        (torch.Size([1, 3, 10]), torch.Size([]))
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = _make_position_embedding(config)
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
        # residual stream's variance does not grow with depth.
        residual_std = _INIT_STD / math.sqrt(2 * config.n_layer)
        for name, param in self.named_parameters():
            # Every attention or MLP variant names its residual output Linear `proj`.
            if name.endswith(_RESIDUAL_WEIGHTS):
                nn.init.normal_(param, mean=0.0, std=residual_std)

    def forward(self, ids: Tensor, targets: Tensor | None = None) -> Output:
        """Compute next-token logits and, given targets, the loss.

        Args:
            ids: token ids, (B, T) int64, with T <= block_size and every id in [0, vocab_size).
            targets: the next token at each position, (B, T) int64; positions where the target
                is `config.pad_id` are left out of the loss.

        Returns:
            `Output(logits, loss)`: logits (B, T, V); loss a 0-d tensor, or None without targets.
            When every target is pad_id the loss is NaN (0 / 0), as in `F.cross_entropy`.

        Raises:
            ValueError: if `ids` is not 2-D, T exceeds block_size, or `targets` has another shape.
        """
        if ids.ndim != 2:
            raise ValueError(f"GPT.forward: ids must be 2-D (B, T), got shape {tuple(ids.shape)}")
        B, T = ids.shape
        if T > self.config.block_size:
            raise ValueError(
                f"GPT.forward: sequence length {T} exceeds block_size {self.config.block_size}"
            )
        if targets is not None and targets.shape != ids.shape:
            raise ValueError(
                f"GPT.forward: targets must have the shape of ids {tuple(ids.shape)}, "
                f"got {tuple(targets.shape)}"
            )

        positions = torch.arange(T, device=ids.device)  # (T,)
        x = self.drop(self.tok_emb(ids) + self.pos_emb(positions))  # (B, T, C)
        for block in self.blocks:
            x = block(x)  # (B, T, C)
        logits = self.head(self.norm_f(x))  # (B, T, V)

        if targets is None:
            return Output(logits, None)
        # -100 is F.cross_entropy's default ignore_index; no valid target id equals it.
        ignore_index = -100 if self.config.pad_id is None else self.config.pad_id
        loss = F.cross_entropy(
            logits.view(B * T, -1),  # (B*T, V)
            targets.reshape(B * T),  # (B*T,)
            ignore_index=ignore_index,
        )
        return Output(logits, loss)

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        """Count parameters, each shared (tied) tensor once.

        Args:
            exclude_embeddings: leave out the position embedding, as nanoGPT does. The token
                embedding stays counted, tied or not: tied, it is also the output head.
        """
        # parameters() yields a shared tensor once, so the tied head is not double counted.
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= sum(p.numel() for p in self.pos_emb.parameters())
        return n


def _init_weights(module: nn.Module) -> None:
    # N(0, _INIT_STD) weights and zero biases, as openai/gpt-2's model.py. LayerNorm keeps
    # PyTorch's default of weight 1, bias 0.
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=_INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=_INIT_STD)

"""Models: `GPTConfig` describes a decoder-only transformer and `GPT(config)` builds it.

>>> model = GPT(GPTConfig(vocab_size=65, n_layer=1, d_model=32))
>>> model.config.head_dim
8
"""

from __future__ import annotations

from transformer_kit.models.config import GPTConfig
from transformer_kit.models.gpt import GPT, MLP, Block, CausalSelfAttention, Output

__all__ = ["GPTConfig", "GPT", "Output", "Block", "CausalSelfAttention", "MLP"]

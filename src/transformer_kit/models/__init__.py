"""Models: `GPTConfig` describes a decoder-only transformer and `GPT(config)` builds it.

>>> model = GPT(GPTConfig(vocab_size=65, n_layer=1, d_model=32, position="rope"))
>>> model.config.head_dim
8

Files, in reading order: config.py (GPTConfig), positional.py (sinusoidal, RoPE, ALiBi),
layers.py (MLP variants, norms), attention.py, cache.py (KVCache), gpt.py (Block, GPT),
features.py (BarPositionFeatures, VoiceStateFeatures and FeatureSum, for the
`position_features` hook), ensemble.py (Ensemble: several models sampled as one).
"""

from __future__ import annotations

from transformer_kit.models.attention import CausalSelfAttention
from transformer_kit.models.cache import KVCache
from transformer_kit.models.config import GPTConfig, MlpKind, NormKind, PositionKind
from transformer_kit.models.ensemble import CombineKind, Ensemble, EnsembleCache
from transformer_kit.models.features import BarPositionFeatures, FeatureSum, VoiceStateFeatures
from transformer_kit.models.gpt import GPT, Block, Output
from transformer_kit.models.layers import MLP, Float16Linear, SwiGLU, pack_float16_linears

__all__ = [
    "GPTConfig",
    "GPT",
    "Output",
    "Block",
    "CausalSelfAttention",
    "MLP",
    "SwiGLU",
    "Float16Linear",
    "pack_float16_linears",
    "KVCache",
    "CombineKind",
    "Ensemble",
    "EnsembleCache",
    "BarPositionFeatures",
    "FeatureSum",
    "VoiceStateFeatures",
    "PositionKind",
    "NormKind",
    "MlpKind",
]

"""A tiny random GPT over a MusicTokenizer's ids, for the constrained-generation tests."""

from __future__ import annotations

import torch

from transformer_kit.models import GPT, GPTConfig
from transformer_kit.tokenization import MusicTokenizer


def tiny_music_gpt(tok: MusicTokenizer, *, seed: int, block_size: int, scale: float = 1.0) -> GPT:
    """One layer, d_model 16, weights from `torch.manual_seed(seed)` times `scale`.

    A large `scale` (x20) pushes the logits far from uniform, so the model fights the
    constraint it samples under instead of drifting through it.
    """
    torch.manual_seed(seed)
    config = GPTConfig(
        vocab_size=len(tok.vocab), n_layer=1, d_model=16, n_head=2, block_size=block_size
    )
    model = GPT(config)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(scale)
    return model

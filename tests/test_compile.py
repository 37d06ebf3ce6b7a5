"""torch.compile: the training step compiles without graph breaks, and the Trainer's `compile`
option trains to the same numbers as eager mode (CPU, tiny model)."""

from __future__ import annotations

import pytest
import torch

from transformer_kit.data import TokenDataset
from transformer_kit.models import GPT, GPTConfig
from transformer_kit.trainer import Trainer, TrainerConfig

pytestmark = pytest.mark.slow


def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, d_model=32))


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_forward_and_loss_have_no_graph_breaks(position):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, d_model=32, position=position)
    )
    ids = torch.randint(4, 32, (2, 16))

    def loss_of(ids: torch.Tensor) -> torch.Tensor:
        return model(ids[:, :-1], ids[:, 1:]).loss

    explanation = torch._dynamo.explain(loss_of)(ids)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_trainer_compile_option_matches_eager():
    torch._dynamo.reset()
    ids = torch.randint(4, 32, (2000,), generator=torch.Generator().manual_seed(1))
    results = {}
    for compiled in (False, True):
        trainer = Trainer(
            tiny_model(),
            TrainerConfig(
                max_steps=3, batch_size=4, warmup_steps=0, eval_every=3, compile=compiled
            ),
            TokenDataset(ids[:1800], 16),
            TokenDataset(ids[1800:], 16),
        )
        results[compiled] = (trainer.fit()["val_loss"], trainer.model.state_dict())
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-4)
    for key, value in results[False][1].items():
        torch.testing.assert_close(results[True][1][key], value, rtol=1e-4, atol=1e-5)

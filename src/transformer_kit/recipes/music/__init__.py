"""A music run's parts: data splits, the model, its sampler, a held-out evaluation and a report.

`examples/bach.py` trains a GPT on the Bach chorales (or a MIDI folder) with these and the
Trainer; a script of your own can take the same parts. Writing samples as MIDI and MusicXML
(`evaluate_music`) needs the `music` extra (music21). See docs/recipes.md.
    >>> tok = MusicTokenizer(voices=2)
    >>> model = music_gpt(tok, n_layer=1, n_head=2, d_model=16, d_ff=32, block_size=32)
    >>> sampler = PieceSampler(model, tok, voices="mono", eval_samples=2, eval_tokens=40)
    >>> len(sampler()), sampler.rule_name
    (2, 'mono0')
"""

from __future__ import annotations

from transformer_kit.recipes.music._evaluation import (
    SAMPLE_TOKENS,
    evaluate_checkpoint,
    evaluate_music,
    results_markdown,
    token_nll,
    write_results,
)
from transformer_kit.recipes.music._run import (
    RUN_SHAPE,
    encode_pieces,
    fit_tokenizer,
    load_run_model,
    load_splits,
    music_gpt,
    pitch_stages,
    run_defaults,
    steps_for_budget,
)
from transformer_kit.recipes.music._sampler import PieceSampler, Voices, length_bounds
from transformer_kit.tokenization import MusicTokenizer  # noqa: F401  (used by the doctest)

__all__ = [
    "RUN_SHAPE",
    "SAMPLE_TOKENS",
    "PieceSampler",
    "Voices",
    "encode_pieces",
    "evaluate_checkpoint",
    "evaluate_music",
    "fit_tokenizer",
    "length_bounds",
    "load_run_model",
    "load_splits",
    "music_gpt",
    "pitch_stages",
    "results_markdown",
    "run_defaults",
    "steps_for_budget",
    "token_nll",
    "write_results",
]

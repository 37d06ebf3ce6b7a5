"""Recipes: the parts of a whole training run in one domain, built from the kit's modules.

Each recipe module gathers what a run on its data needs beyond the general modules (a model
builder, a sampler, an evaluation and its report), so that an example script stays a short
story and a user's own script can take the same parts. `transformer_kit.recipes.music` serves
`examples/bach.py` and runs on any MIDI folder. See docs/recipes.md.
"""

from __future__ import annotations

__all__: list[str] = []

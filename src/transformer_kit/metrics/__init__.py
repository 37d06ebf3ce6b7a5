"""Evaluation metrics: functions of model outputs or samples that return plain floats.

`perplexity` lives here; the music metrics and the musical early stopping live in
`transformer_kit.metrics.music` (import it as ``from transformer_kit.metrics import music``).
    >>> perplexity(0.0)
    1.0
"""

from __future__ import annotations

import math

__all__ = ["perplexity"]


def perplexity(loss: float) -> float:
    """Return ``exp(loss)`` for a mean cross-entropy loss in nats; ``inf`` instead of overflowing.

    NaN stays NaN, so a diverged run is visible rather than hidden behind a large number.

    Raises:
        TypeError: ``loss`` is not a real number.
    """
    if isinstance(loss, bool) or not isinstance(loss, int | float):
        raise TypeError(f"perplexity: loss must be a real number, got {loss!r}")
    try:
        return math.exp(loss)  # NaN in, NaN out
    except OverflowError:  # loss > ~709.78, where float64 ends
        return math.inf

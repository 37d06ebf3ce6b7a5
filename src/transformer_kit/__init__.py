"""transformer-kit: train transformer models from scratch with the practices that work."""

from __future__ import annotations

from transformer_kit._version import __version__

__all__ = ["__version__"]

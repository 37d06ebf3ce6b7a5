"""The single place the library version is written (read by pyproject.toml and checkpoints)."""

__version__ = "0.1.0"

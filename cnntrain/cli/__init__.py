"""Command-line entry points, one module per command (pyproject.toml's console scripts)."""

from cnntrain.cli.train import main

__all__ = ["main"]

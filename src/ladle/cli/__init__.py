"""The `ladle` command: argument parsing only; each command calls the public API."""

from ladle.cli.main import main

__all__ = ["main"]

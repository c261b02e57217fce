"""The command line: Typer commands, option declarations, rendering."""

from .commands import app, main

__all__ = ["app", "main"]

"""The command line: Typer commands, option declarations, rendering."""

# Each command module registers its commands on the app; this order is --help's.
from . import commands, search, suggest, report, sort, review  # noqa: F401, I001
from .app import app, main

__all__ = ["app", "main"]

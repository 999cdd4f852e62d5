"""The ``headstart`` command line (typer): each command is a thin call into the library."""

from headstart.cli.app import app, main

__all__ = ["app", "main"]

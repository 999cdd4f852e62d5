"""What every command shares: the typer app, the consoles, and how a headstart error is printed.

Errors headstart raises on purpose are printed as one message with its fix (no traceback), exit code 2.
"""

from __future__ import annotations

import typer
from rich.console import Console

from headstart.errors import HeadstartError

__all__ = ["app", "console", "error_console", "fail", "split_list"]

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Transfer learning from pretrained models: train, evaluate, predict, export, serve.")
console = Console()
error_console = Console(stderr=True)


def fail(error: HeadstartError) -> None:
    """Print ``error`` and its fix, then exit with code 2."""
    error_console.print(f"[bold red]Error:[/bold red] {error.message}", highlight=False)
    if error.fix:
        error_console.print(f"[bold]Fix:[/bold] {error.fix}", highlight=False)
    raise typer.Exit(code=2)


def split_list(value: str) -> list[str]:
    """A comma-separated option as a list (blanks dropped).

    >>> split_list("a, b,,c")
    ['a', 'b', 'c']
    """
    return [item.strip() for item in value.split(",") if item.strip()]

"""The ``headstart`` command line (typer): each command is a thin call into the library.

Commands live in one module per stage of the work - :mod:`~headstart.cli.train`, :mod:`~headstart.cli.predict`
(evaluate, predict), :mod:`~headstart.cli.models` (backbones, cache), :mod:`~headstart.cli.select` (lr-find,
compare, rank), :mod:`~headstart.cli.deploy` (export, serve), :mod:`~headstart.cli.adapt` (adapt, shift) - and
import the library only inside the command that runs, so ``headstart serve`` never loads training code.
"""

# isort: off
# importing a command module registers its commands; `headstart --help` lists them in this order
from headstart.cli import train, predict, models, select, deploy, adapt  # noqa: F401
# isort: on
from headstart.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``headstart`` script."""
    app()

"""The ``ganaudit`` command line: the root app and its options; one module per command group registers its
commands here.

- ``common``: exit codes, ``fail``, ``friendly_errors``, ``progress_wanted`` (imported by every group, imports none)
- ``training``: train, sample, export (torch, imported inside the commands)
- ``scan``: scan; ``models``: models, info; ``audit``: audit gan, audit detector; ``serve``: serve

Heavy imports (torch, FastAPI) happen inside the commands that need them.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from .. import __version__
from . import audit, models, scan, serve, training
from .common import (
    EXIT_INTERNAL, EXIT_OS, EXIT_USAGE, TerminalSafeFormatter, fail, friendly_errors, progress_wanted, set_quiet,
)

__all__ = ["app", "main", "fail", "friendly_errors", "progress_wanted", "EXIT_USAGE", "EXIT_OS", "EXIT_INTERNAL"]

app = typer.Typer(
    name="ganaudit",
    help="Train GAN-based detectors on normal/real images, export them to ONNX, and flag anomalous or generated images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ganaudit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more detail to stderr.")] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars and no warnings on stderr; errors still show.")
    ] = False,
) -> None:
    set_quiet(quiet)
    from ..core.threads import share_cores

    share_cores()  # before any command imports torch: libgomp reads its wait policy once
    level = logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TerminalSafeFormatter("%(levelname)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger().setLevel(level)


# Command order is the order `ganaudit --help` lists them (docs/cli.md follows it).
training.register(app)
models.register_info(app)
scan.register(app)
serve.register(app)
models.register(app)
audit.register(app)


def main() -> None:
    app()

"""What every command shares: the exit codes, ``fail``, ``friendly_errors`` (exceptions to one-line errors),
the -q state behind ``progress_wanted``, and the check for the training extra.

Exit codes (docs/cli.md): 0 done; 1 flagged (scan --fail-on-flag, audit --fail-on, and nothing else); 2 usage,
configuration or model error; 3 unreadable images (scan --strict); 4 the operating system refused a read or
write (disk full, permission, not a directory); 5 internal error (a bug: please report it); 130 interrupted.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import re
import sys
from typing import Any, Callable, TypeVar

import typer

from ..core.errors import GanauditError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FLAGGED = 1  # scan --fail-on-flag; audit --fail-on (a verdict tripped)
EXIT_USAGE = 2
EXIT_UNREADABLE = 3
EXIT_OS = 4
EXIT_INTERNAL = 5
EXIT_INTERRUPTED = 130
MAX_SHOWN = 300  # characters of a value or message echoed in an error line
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print a one-line error on stderr and return the Exit to raise."""
    typer.echo(f"error: {terminal_safe(message)}", err=True)
    return typer.Exit(code)


def terminal_safe(text: str) -> str:
    """``text`` with control characters written as ``\\xNN``: a file name holding an escape sequence (it may
    come from a stranger) must not retitle, recolour or rewrite the user's terminal."""
    return CONTROL_CHARACTERS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class TerminalSafeFormatter(logging.Formatter):
    """Log records with :func:`terminal_safe` applied to each line: a warning that names a stranger's file
    (``skipped 1 unreadable file(s): evil\x1b]0;...``) must not reach the terminal raw either."""

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(terminal_safe(line) for line in super().format(record).split("\n"))


def _cut(text: str) -> str:
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + f"... ({len(text)} characters)"


def os_error_line(e: OSError) -> str:
    """One line for an OSError: what the system said, and the file it said it about."""
    what = e.strerror or str(e) or type(e).__name__
    names = [os.fsdecode(x) for x in (e.filename, e.filename2) if x is not None]
    return _cut(f"{what}: {' -> '.join(names)}" if names else what)


def _click_flow() -> tuple[type[BaseException], ...]:
    """Exceptions that carry click's own control flow (exit, abort, usage errors): passed through untouched.
    Recent typer releases (0.29 here) vendor click as typer._click and no longer install click itself."""
    kinds: list[type[BaseException]] = [typer.Exit, typer.Abort]
    for name in ("click.exceptions", "typer._click.exceptions"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        kinds += [getattr(module, n) for n in ("Exit", "ClickException", "Abort") if hasattr(module, n)]
    return tuple(kinds)


_CLICK_FLOW = _click_flow()


def friendly_errors(fn: F) -> F:
    """Turn ganaudit errors into a one-line message and exit code 2, OSError into exit 4, any other exception
    into exit 5 (the traceback only with -v), Ctrl-C into exit 130. Exit 1 stays for "flagged"."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _CLICK_FLOW:
            raise
        except GanauditError as e:
            raise fail(_cut(str(e))) from None
        except KeyboardInterrupt:
            raise fail("interrupted", EXIT_INTERRUPTED) from None
        except OSError as e:
            raise fail(os_error_line(e), EXIT_OS) from None
        except Exception as e:  # noqa: BLE001 - a bug: one line for the user, the traceback with -v
            logging.getLogger("ganaudit").info("internal error", exc_info=True)
            raise fail(
                _cut(f"internal error ({type(e).__name__}: {e}); please report it with the output of `ganaudit -v ...`"),
                EXIT_INTERNAL,
            ) from None

    return wrapper  # type: ignore[return-value]


_state = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    """Record the root -q flag (the root callback calls this before any command runs)."""
    _state["quiet"] = quiet


def progress_wanted(requested: bool) -> bool:
    """Draw a progress bar only when asked for, not silenced by -q, and stderr is a terminal (a log file or a
    pipe would fill with its \\r frames)."""
    return requested and not _state["quiet"] and sys.stderr.isatty()


def require_training_extra() -> None:
    """Exit 2 with the install line when torch is missing (train, sample, export)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise fail("this command needs the training extra: pip install torch==2.13.0 'ganaudit[train]'") from None

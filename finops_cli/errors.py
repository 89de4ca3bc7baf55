"""The CLI's error handling, in one place: every command of the `finops-ml` app runs inside `ErrorHandlingGroup`.

- a FinopsError (bad input or configuration) is one red sentence on stderr and exit code 1;
- any other exception is a bug: one sentence naming it and the file its traceback was written to, exit code 1;
- Typer's own exits and usage errors, and a closed output pipe, pass through to Typer unchanged.
"""

from __future__ import annotations

import os
import tempfile
import time
import traceback
from pathlib import Path

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from finops_ml.errors import FinopsError
from finops_ml.fileio import atomic_path

err = Console(stderr=True)
# Typer's exceptions, whether it uses click or its vendored copy (typer >= 0.24): click's ClickException is the base
# of every usage error and of the BadParameter that commands raise themselves.
_CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
PASS_THROUGH = (typer.Exit, typer.Abort, _CLICK_EXCEPTION, BrokenPipeError)


def print_error(message: str) -> None:
    # soft_wrap: the sentence stays on one line whatever the terminal width
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)


def save_traceback(exc: BaseException) -> Path:
    """Write the exception's traceback to a new file under the temporary directory; its path."""
    path = Path(tempfile.gettempdir()) / "finops-ml" / f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    with atomic_path(path) as tmp:
        tmp.write_text("".join(traceback.format_exception(exc)))
    return path


def unexpected_error_message(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    what = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    try:
        where = f"the traceback is in {save_traceback(exc)}"
    except OSError as write_error:
        where = f"its traceback could not be saved ({write_error.strerror or write_error})"
    return f"unexpected error ({what}); this is a bug in finops-ml, {where}; please include it when reporting it."


class ErrorHandlingGroup(typer.core.TyperGroup):
    """A Typer command group that turns the exceptions of its commands into one sentence and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PASS_THROUGH:
            raise
        except FinopsError as exc:
            print_error(str(exc))
        except Exception as exc:
            print_error(unexpected_error_message(exc))
        raise typer.Exit(1)

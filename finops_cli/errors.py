"""The CLI's error handling, in one place: every command of the `finops-ml` app runs inside `ErrorHandlingGroup`.

- a FinopsError (bad input or configuration) is one red sentence on stderr and exit code 1;
- no Google Cloud credentials (DefaultCredentialsError) is one sentence saying how to log in;
- any other exception is a bug: one sentence naming it and the file its traceback was written to, exit code 1;
- Typer's own exits and usage errors, and a closed output pipe, pass through to Typer unchanged.
"""

from __future__ import annotations

import os
import re
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
        except ImportError as exc:  # a module of an extra this installation lacks, or a bug of ours
            print_error(missing_module_message(exc) or unexpected_error_message(exc))
        except Exception as exc:
            print_error(missing_credentials_message(exc) or unexpected_error_message(exc))
        raise typer.Exit(1)


def missing_credentials_message(exc: BaseException) -> str | None:
    """The sentence for a Google client that found no Application Default Credentials; None for anything else."""
    try:
        from google.auth.exceptions import DefaultCredentialsError
    except ImportError:
        return None
    for _ in range(10):  # a client may wrap it; a chain can loop
        if exc is None or isinstance(exc, DefaultCredentialsError):
            break
        exc = exc.__cause__ or exc.__context__
    if not isinstance(exc, DefaultCredentialsError):
        return None
    return ("no Google Cloud credentials were found (Application Default Credentials); run `gcloud auth "
            "application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a service account key file, "
            "then try again.")


# The modules of each runtime's extra (pyproject.toml [project.optional-dependencies]): a command that imports one
# that is not installed says which extra to install.
EXTRAS = {
    "kfp": "pipeline", "pyarrow": "pipeline", "duckdb": "pipeline", "sqlglot": "pipeline", "matplotlib": "pipeline",
    "plotly": "pipeline", "jinja2": "pipeline",
    "google.cloud.bigquery": "pipeline", "db_dtypes": "pipeline",
    "fastapi": "serving", "uvicorn": "serving",
    "confluent_kafka": "stream", "orjson": "stream", "prometheus_client": "stream",
    "google.cloud.aiplatform": "vertex", "google.cloud.storage": "vertex", "google.cloud.scheduler_v1": "vertex",
    "google.api_core": "vertex",
    "functions_framework": "bridge",
}
_OWN = ("finops_ml", "finops_cli", "components", "pipelines")


def missing_module_message(exc: ImportError) -> str | None:
    """The sentence for a module a command needs and this installation lacks; None for an error of the project's own."""
    name = exc.name or ""
    # `from google.cloud import bigquery` without the package: ImportError "cannot import name 'bigquery' from ..."
    found = re.match(r"cannot import name '(\w+)' from '([\w.]+)'", str(exc))
    if found and not isinstance(exc, ModuleNotFoundError):
        name = f"{found.group(2)}.{found.group(1)}"
    if not name or name.startswith(_OWN):
        return None
    extra = next((e for m, e in EXTRAS.items() if name == m or name.startswith(m + ".")), None)
    if extra is None:
        return (f"this command needs the Python module {name}, which is not installed; install the extras of the "
                "runtimes you use (pipeline, serving, stream, vertex), or all of them: pip install 'finops-ml[dev]'.")
    return (f"this command needs the {extra} extra (the Python module {name} is not installed): "
            f"pip install 'finops-ml[{extra}]'.")

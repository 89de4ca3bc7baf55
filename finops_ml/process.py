"""How a pipeline step's process ends: without the C++ teardown that aborts it now and then (issue 12).

A step's process reads Parquet with pyarrow and queries DuckDB. Their native thread pools are still alive when the
interpreter exits, and the static destructors that run at exit() race with them: about one process in twenty on a
busy machine aborts with "terminate called without an active exception" *after* the step wrote its outputs (seen
with `pd.read_parquet` alone; apache/arrow#34314, duckdb/duckdb#13904). The local runner and Vertex AI then see a
failed step. Nothing of that teardown is needed: once the step succeeded, its process ends with `os._exit(0)` after
flushing its output, so no destructor runs. A step that raised ends as Python ends it (its traceback, status 1).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys

KFP_RUNTIME_ENV = "_KFP_RUNTIME"  # set by the command line KFP gives every component's container / process
_state = {"armed": False, "failed": False}


def end_step_process_cleanly() -> None:
    """In a KFP component's process (never elsewhere: a test runner must end as it ends): once the process exits
    without an uncaught exception, end it with os._exit(0), skipping the native libraries' teardown. Called when
    the finops_ml package is imported, which every component does."""
    if os.environ.get(KFP_RUNTIME_ENV) != "true" or _state["armed"]:
        return
    _state["armed"] = True
    previous = sys.excepthook

    def note_failure(*exc_info) -> None:
        _state["failed"] = True
        previous(*exc_info)

    sys.excepthook = note_failure
    atexit.register(_exit_now)  # registered last, so it runs first of the exit handlers


def _exit_now() -> None:
    if _state["failed"]:
        return  # the usual ending: traceback printed, status 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)

"""A pipeline step's process ends without the native teardown that aborts it now and then (finops_ml/process.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

# A stand-in for a native library whose teardown at exit aborts the process (what pyarrow's and DuckDB's thread
# pools do, about once in twenty processes on a busy machine): an exit handler registered before the step's.
SCRIPT = """
import atexit, os, sys
atexit.register(os.abort)
from finops_ml.process import end_step_process_cleanly
end_step_process_cleanly()
print("outputs written", flush=False)
if sys.argv[1] == "raise":
    raise RuntimeError("the step failed")
"""


def _run(mode: str, kfp: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "_KFP_RUNTIME": "true"} if kfp else {k: v for k, v in os.environ.items()
                                                              if k != "_KFP_RUNTIME"}
    return subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, env=env, timeout=60)


def test_a_step_that_succeeded_ends_with_status_0_and_its_output_flushed_despite_a_teardown_abort():
    result = _run("ok", kfp=True)
    assert result.returncode == 0 and "outputs written" in result.stdout


def test_a_step_that_raised_still_fails_with_its_traceback():
    result = _run("raise", kfp=True)
    assert result.returncode != 0 and "RuntimeError: the step failed" in result.stderr


def test_outside_a_kfp_component_the_process_ends_as_python_ends_it():
    # the teardown abort shows: nothing is skipped in a test runner or the CLI
    assert _run("ok", kfp=False).returncode != 0

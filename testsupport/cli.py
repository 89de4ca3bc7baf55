"""`finops-ml` as a user runs it: the installed console script in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(sys.executable).parent / "finops-ml"


def command(*args: str) -> list[str]:
    """The command line of `finops-ml ARGS` (the console script, or the same entry point through this Python)."""
    base = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-c", "from finops_cli.main import main; main()"]
    return [*base, *args]


def finops_ml(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `finops-ml ARGS` to the end; stdout and stderr captured as text."""
    env = {**os.environ, "COLUMNS": "400"}  # so that rich does not wrap a table or a one-sentence error
    return subprocess.run(command(*args), capture_output=True, text=True, timeout=timeout, env=env)


def one_error_sentence(result: subprocess.CompletedProcess) -> str:
    """The single `error: ...` line a failed command printed on stderr (AssertionError if it printed anything else)."""
    # plain asserts (no pytest rewriting here): each says what it saw
    assert result.returncode != 0, f"exit code 0; stdout: {result.stdout}"
    assert "Traceback" not in result.stderr + result.stdout, result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"stderr is not one error line: {result.stderr!r}"
    return lines[0]

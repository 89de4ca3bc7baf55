"""Run the training pipeline with the KFP local runner, and compile it for Vertex AI Pipelines."""

from __future__ import annotations

import contextlib
import io
import re
import time
from pathlib import Path
from typing import Callable

from kfp import compiler, local

from pipelines.training import training_pipeline

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '([\w-]+)'")
_FINISHED = re.compile(r"Task '([\w-]+)' finished with status (\w+)")


class StepLog(io.TextIOBase):
    """Captures the local runner's output into a log file and reports task starts and ends with timings."""

    def __init__(self, log_file, on_event: Callable[[str, str, float | None], None]):
        self.log_file, self.on_event = log_file, on_event
        self.started: dict[str, float] = {}
        self.timings: dict[str, float] = {}
        self.failed: list[str] = []
        self._buffer = ""

    def write(self, text: str) -> int:
        self.log_file.write(text)
        self._buffer += text
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            self._line(_ANSI.sub("", line))
        return len(text)

    def _line(self, line: str) -> None:
        if line.startswith(" "):  # output of the task's own process
            return
        m = _STARTED.search(line)
        if m:
            self.started[m.group(1)] = time.perf_counter()
            self.on_event(m.group(1), "start", None)
            return
        m = _FINISHED.search(line)
        if m:
            name, status = m.group(1), m.group(2)
            seconds = time.perf_counter() - self.started.get(name, time.perf_counter())
            self.timings[name] = round(seconds, 2)
            if status != "SUCCESS" and name not in self.failed:
                self.failed.append(name)
            elif status == "SUCCESS" and name in self.failed:  # a retry succeeded: the step did its work
                self.failed.remove(name)
            self.on_event(name, status.lower(), seconds)


def run_local(arguments: dict, pipeline_root: Path, log_path: Path,
              on_event: Callable[[str, str, float | None], None]) -> tuple[object, dict[str, float], list[str]]:
    """Run the pipeline on this machine; returns (the run's task, per-step seconds, failed steps)."""
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
               raise_on_error=False)
    with open(log_path, "w") as log:
        step_log = StepLog(log, on_event)
        with contextlib.redirect_stdout(step_log), contextlib.redirect_stderr(step_log):
            task = training_pipeline(**arguments)
    return task, step_log.timings, step_log.failed


def compile_pipeline(path: str | Path, image: str | None = None) -> Path:
    """The pipeline YAML for Vertex AI; `image` replaces the components' image (default: FINOPS_ML_PIPELINE_IMAGE)."""
    from components.image import PIPELINE_IMAGE
    from finops_ml.fileio import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        compiler.Compiler().compile(training_pipeline, package_path=str(tmp.with_suffix(".yaml")))
        text = tmp.with_suffix(".yaml").read_text()
        tmp.with_suffix(".yaml").unlink()
        if image:
            text = text.replace(f"image: {PIPELINE_IMAGE}\n", f"image: {image}\n")
        tmp.write_text(text)
    return path

"""`finops-ml run` N times in a row while busy loops load the cores: does a run ever fail under load? (issue 12)

Each run is the real CLI in a fresh process with a fresh --out; a run counts as failed when the CLI exits non-zero,
prints a traceback, or any step's process aborted ("terminate called ..."), even if the step's retry then succeeded.
Prints one row per run and a summary; exits 1 if any run failed.

    python -m benchmarks.stress_run [--runs 20] [--busy 2] [--small] [--seed 42] [--workdir DIR]

--small runs a smaller organisation (3 plants, 6 resources per project, 12 months: every model still trains), so that
20 runs under load fit in about half an hour on 2 cores; without it each run is the full default organisation
(configs/local.yaml: the realistic world, as `make run`; the gates may fail there, which is no failure of a run).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from finops_ml.config import CONFIG_DIR

SMALL = {"plants": 3, "resources_per_project": 6, "months": 12}
# What a step's process prints when it dies in C++ at exit; the KFP local runner's log lines of a failed task.
ABORT_MARKERS = ("terminate called", "Aborted", "core dumped", "Traceback (most recent call last)")


def _spin() -> None:
    while True:
        pass


def _config(workdir: Path, small: bool) -> Path:
    raw = yaml.safe_load((CONFIG_DIR / "local.yaml").read_text(encoding="utf-8"))
    if small:
        raw["generator"].update(SMALL)
    path = workdir / "stress.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def one_run(i: int, workdir: Path, config: Path, seed: int) -> dict:
    out = workdir / f"run{i:02d}"
    cli = [sys.executable, "-m", "finops_cli.main", "run", "--seed", str(seed), "--out", str(out),
           "--config", str(config)]
    started = time.perf_counter()
    proc = subprocess.run(cli, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    log_path = out / "pipeline.log"
    log = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
    text = proc.stdout + proc.stderr + log
    aborts = [m for m in ABORT_MARKERS if m in text]
    # A step's attempt that failed (and was retried by the local runner): the pipeline may still succeed.
    failed_attempts = len(re.findall(r"Task '[\w-]+' finished with status (?!SUCCESS)\w+", log))
    shutil.rmtree(out / "data", ignore_errors=True)  # the events are the bulk; the log and summary stay
    return {"run": i, "rc": proc.returncode, "seconds": seconds, "aborts": aborts, "failed_attempts": failed_attempts,
            "ok": proc.returncode == 0 and not aborts,
            "tail": "" if proc.returncode == 0 else (proc.stdout + proc.stderr)[-400:]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--busy", type=int, default=2, help="busy loops beside the runs (default 2: both cores of CI)")
    ap.add_argument("--small", action="store_true", help="a smaller organisation (see the module's docstring)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="finops-stress-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = _config(workdir, args.small)
    console = Console()
    busy = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for p in busy:
        p.start()
    console.print(f"{args.runs} runs of `finops-ml run --seed {args.seed}` ({'small' if args.small else 'default'} "
                  f"organisation) beside {args.busy} busy loops on {os.cpu_count()} cores; outputs in {workdir}")
    rows = []
    try:
        for i in range(1, args.runs + 1):
            row = one_run(i, workdir, config, args.seed)
            rows.append(row)
            console.print(f"run {i:2d}: rc {row['rc']}  {row['seconds']:6.1f} s  "
                          f"{'ok' if row['ok'] else 'FAILED ' + ', '.join(row['aborts'])}  failed step attempts: "
                          f"{row['failed_attempts']}")
            if row["tail"]:
                console.print(row["tail"], markup=False)
    finally:
        for p in busy:
            p.terminate()
    table = Table(title="finops-ml run under load")
    for col in ("runs", "succeeded", "failed", "runs with an abort", "failed step attempts", "median s", "max s"):
        table.add_column(col, justify="right")
    secs = sorted(r["seconds"] for r in rows)
    table.add_row(str(len(rows)), str(sum(r["ok"] for r in rows)), str(sum(not r["ok"] for r in rows)),
                  str(sum(bool(r["aborts"]) for r in rows)), str(sum(r["failed_attempts"] for r in rows)),
                  f"{secs[len(secs) // 2]:.1f}", f"{secs[-1]:.1f}")
    console.print(table)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

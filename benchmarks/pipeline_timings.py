"""Seconds per step (generate, ingest, features, each model) and in total, at the default size and at 1M line items.

Runs the library steps directly (what each pipeline component calls), in one process, and prints a table. It times
the default world (configs/local.yaml: realistic), what `finops-ml run` runs; `--shape easy` times the easy one.
    python -m benchmarks.pipeline_timings [--sizes default,1m] [--shape SHAPE] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from finops_ml.config import load_config
from finops_ml.synthetic.generator import generate, resources_for_rows, shape_config
from finops_ml.training.steps import (
    features_step,
    ingest_step,
    train_anomaly_step,
    train_forecast_step,
    train_labeler_step,
)

SIZES = {"default": None, "1m": 1_000_000, "10m": 10_000_000}  # target line items (None: the config's size)


def run(size: str, workdir: Path, shape: str | None = None) -> dict:
    cfg = load_config()
    if shape:
        cfg = cfg.model_copy(update={"generator": shape_config(shape, cfg.generator)})
    if SIZES[size]:
        per_project = resources_for_rows(cfg.generator, SIZES[size])
        cfg = cfg.model_copy(update={"generator": cfg.generator.model_copy(
            update={"resources_per_project": per_project})})
    d = workdir / size
    timings = {}

    def step(name, fn, *args):
        t0 = time.perf_counter()
        result = fn(*args)
        timings[name] = time.perf_counter() - t0
        return result

    meta = step("generate", generate, cfg.generator, cfg.seed, d / "data", "parquet")
    step("ingest", ingest_step, str(d / "data" / "events.parquet"), str(d / "data" / "control_totals.csv"),
         str(d / "events"))
    step("features", features_step, str(d / "events"), str(d / "daily.parquet"), str(d / "resource_daily.parquet"),
         str(d / "resources.parquet"))
    step("train_anomaly", train_anomaly_step, str(d / "resource_daily.parquet"), str(d / "resources.parquet"),
         str(d / "data" / "truth" / "anomaly_cells.csv"), "", cfg, str(d / "m2"), str(d / "e2"))
    step("train_forecast", train_forecast_step, str(d / "daily.parquet"), cfg, str(d / "m1"), str(d / "e1"))
    step("train_labeler", train_labeler_step, str(d / "resources.parquet"),
         str(d / "data" / "truth" / "resources.csv"), cfg, str(d / "m3"), str(d / "e3"))
    timings["total"] = sum(timings.values())
    return {"rows": meta["rows"], "timings": timings,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="default,1m")
    parser.add_argument("--shape", default=None, help="organisation shape over the config's generator (default: none)")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="finops-bench-"))
    results = {size: run(size, workdir, args.shape) for size in args.sizes.split(",")}
    table = Table(title="finops-ml step timings (seconds)")
    table.add_column("step")
    for size, r in results.items():
        table.add_column(f"{size} ({r['rows']:,} rows)", justify="right")
    for name in next(iter(results.values()))["timings"]:
        table.add_row(name, *(f"{r['timings'][name]:.1f}" for r in results.values()))
    table.add_row("peak RSS (GiB, cumulative)", *(f"{r['peak_rss_gib']:.2f}" for r in results.values()))
    Console().print(table)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

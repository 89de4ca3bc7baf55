"""Ingest and feature building at 1M and 10M line items: rows/s and peak memory, beside raw DuckDB.

Each step runs in its own process, so its peak memory (max RSS) is its own:
    python -m benchmarks.ingest_scale [--sizes 1m,10m] [--workdir DIR] [--keep]

  generate        the synthetic organisation (configs/local.yaml's: the realistic world) to Parquet (and to JSONL
                  at 1M: JSONL at 10M is ~13 GB)
  ingest parquet  read -> validate -> event ids -> dedupe -> events.parquet (finops_ml.data.ingest)
  ingest jsonl    the same from JSONL
  features        the daily_cost feature view (feature_defs/daily_cost.sql) over the events table, written to Parquet
                  as the pipeline's features step does
  reference       the same SQL run directly by DuckDB on the generator's Parquet file, fetched to Arrow: what the
                  bare query costs; `features / reference` is the ratio
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

SIZES = {"1m": 1_000_000, "10m": 10_000_000}

GENERATE = """
from finops_ml.config import load_config
from finops_ml.synthetic.generator import generate, resources_for_rows
cfg = load_config().generator
cfg = cfg.model_copy(update={{"resources_per_project": resources_for_rows(cfg, {rows})}})
meta = generate(cfg, 42, {out!r}, fmt={fmt!r})
print(meta["rows"])
"""
INGEST = """
from finops_ml.data.ingest import ingest
s = ingest({source!r}, {out!r}, {control!r})
assert s["reconciliation_diff"] == 0.0, s["reconciliation_diff"]
print(s["read"])
"""
FEATURES = """
from finops_ml.data.warehouse import export_feature_view
print(export_feature_view("daily_cost", {events!r}, {out!r}))
"""
REFERENCE = """
import duckdb
from finops_ml.data.warehouse import feature_sql
con = duckdb.connect()
con.execute("SET threads TO 2")
con.execute("CREATE VIEW events AS SELECT * FROM read_parquet({events!r})")
print(con.execute(feature_sql("daily_cost")).fetch_arrow_table().num_rows)
"""


def run_step(code: str) -> dict:
    """Run a snippet in a fresh Python process; its seconds, peak RSS (GiB) and what it printed."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"step failed:\n{code}\n{err}")
    return {"seconds": seconds, "peak_gib": usage.ru_maxrss / 2**20, "output": out.strip().splitlines()[-1]}


def bench(size: str, work: Path) -> list[tuple[str, dict]]:
    rows, d = SIZES[size], work / size
    results = []
    gen = run_step(GENERATE.format(rows=rows, out=str(d / "pq"), fmt="parquet"))
    results.append(("generate parquet", gen))
    n = int(gen["output"])
    results.append(("ingest parquet", run_step(INGEST.format(
        source=str(d / "pq" / "events.parquet"), out=str(d / "events"), control=str(d / "pq" / "control_totals.csv")))))
    if rows <= 1_000_000:
        results.append(("generate jsonl", run_step(GENERATE.format(rows=rows, out=str(d / "js"), fmt="jsonl"))))
        results.append(("ingest jsonl", run_step(INGEST.format(
            source=str(d / "js" / "events.jsonl"), out=str(d / "events_js"),
            control=str(d / "js" / "control_totals.csv")))))
    results.append(("features (daily_cost)", run_step(FEATURES.format(events=str(d / "events" / "events.parquet"),
                                                                     out=str(d / "daily_cost.parquet")))))
    results.append(("reference (raw DuckDB)", run_step(REFERENCE.format(events=str(d / "pq" / "events.parquet")))))
    for _, r in results:
        r["rows"] = n
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1m,10m")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="finops-scale-"))
    console = Console()
    all_results = {}
    for size in args.sizes.split(","):
        results = bench(size, work)
        all_results[size] = results
        table = Table(title=f"{size}: {results[0][1]['rows']:,} line items")
        for col in ("step", "seconds", "rows/s", "peak RSS (GiB)"):
            table.add_column(col, justify="right" if col != "step" else "left")
        for name, r in results:
            table.add_row(name, f"{r['seconds']:.1f}", f"{r['rows'] / r['seconds']:,.0f}", f"{r['peak_gib']:.2f}")
        timing = dict(results)
        ratio = timing["features (daily_cost)"]["seconds"] / timing["reference (raw DuckDB)"]["seconds"]
        console.print(table)
        console.print(f"features / raw DuckDB reference: {ratio:.2f}x")
    (work / "results.json").write_text(json.dumps(all_results, indent=2))
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The real-time anomaly detector alone: events/s on one core, agreement with the batch detector, state size.

For each organisation shape and seed: generate the billing data, fit the batch detector on all but the last 3
months (threshold from the training labels, as the pipeline), then feed every event in time order to
`detect_anomaly_realtime` (JSON already parsed: the Kafka consumer's share is measured by the stream benchmark).
The default shapes: the default world (realistic, configs/local.yaml) and a large, calm one (`easy` knobs).
Prints one row per run: events/s, anomalies decided in batch and in real time and how many differ, the share raised
by an event of their own day (before the day closed), open alerts retracted, and the state's snapshot size and
save/load time.
    python -m benchmarks.realtime_detector [--shapes realistic,large_fast_migration] [--seeds 42] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from finops_ml.config import load_config
from finops_ml.data.ingest import ingest
from finops_ml.data.warehouse import export_feature_view
from finops_ml.models.anomaly import CostAnomalyDetector
from finops_ml.models.realtime import RealtimeState, detect_anomaly_realtime
from finops_ml.synthetic.generator import generate, shape_config


def run(shape: str, seed: int, workdir: Path) -> dict:
    d = workdir / f"{shape}-{seed}"
    gcfg = shape_config(shape, load_config().generator)
    generate(gcfg, seed, d / "data", "jsonl")
    ingest(str(d / "data" / "events.jsonl"), d / "ingest", None)
    export_feature_view("resource_daily_cost", d / "ingest" / "events.parquet", d / "rdc.parquet")
    daily = pd.read_parquet(d / "rdc.parquet")
    daily["day"] = pd.to_datetime(daily["day"])
    cutoff = daily.day.max() - pd.DateOffset(months=3) + pd.offsets.MonthEnd(0)
    truth = pd.read_csv(d / "data" / "truth" / "anomaly_cells.csv")
    detector = CostAnomalyDetector(seed=seed).fit(daily[daily.day <= cutoff], truth)
    batch = set(detector.score(daily).query("is_anomaly").anomaly_id)

    with open(d / "data" / "events.jsonl") as f:
        events = [json.loads(line) for line in f]
    events.sort(key=lambda e: e["usage_start_time"])  # a billing stream's order
    state = RealtimeState.from_detector(detector, lateness_days=1)
    raised: dict[str, list[str]] = {}
    t0 = time.process_time()  # CPU time of this process: one core, whatever else the machine runs
    for e in events:
        for a in detect_anomaly_realtime(e, state):
            raised.setdefault(a["anomaly_id"], []).append(a["status"])
    for a in state.flush():
        raised.setdefault(a["anomaly_id"], []).append(a["status"])
    cpu = time.process_time() - t0
    decided = {k for k, v in raised.items() if v[-1] != "retracted"}
    t0 = time.perf_counter()
    state.save(d / "state.pkl")
    save_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    RealtimeState.load(d / "state.pkl")
    load_s = time.perf_counter() - t0
    return {"shape": shape, "seed": seed, "events": len(events), "events_per_s": len(events) / cpu,
            "batch": len(batch), "realtime": len(decided), "differ": len(batch ^ decided),
            "open_share": sum(v[0] == "open" for v in raised.values()) / max(len(raised), 1),
            "retracted": state.counters["retracted"], "state_mib": os.path.getsize(d / "state.pkl") / 2**20,
            "save_s": save_s, "load_s": load_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="realistic,large_fast_migration")
    parser.add_argument("--seeds", default="42")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="finops-realtime-"))
    table = Table(title="Real-time detector: one core, events already parsed (CPU time)")
    cols = ["shape", "seed", "events", "events/s", "batch anomalies", "real-time", "differ", "raised same day",
            "retracted", "state MiB", "save s", "load s"]
    for c in cols:
        table.add_column(c, justify="right")
    console = Console()
    for shape in args.shapes.split(","):
        for seed in map(int, args.seeds.split(",")):
            console.print(f"[dim]{shape} seed {seed} ...[/]")
            r = run(shape, seed, workdir)
            table.add_row(r["shape"], str(r["seed"]), f"{r['events']:,}", f"{r['events_per_s']:,.0f}", str(r["batch"]),
                          str(r["realtime"]), str(r["differ"]), f"{r['open_share']:.1%}", str(r["retracted"]),
                          f"{r['state_mib']:.1f}", f"{r['save_s']:.2f}", f"{r['load_s']:.2f}")
    console.print(table)


if __name__ == "__main__":
    main()

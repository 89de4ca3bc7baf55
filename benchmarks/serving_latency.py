"""Latency of the prediction server under load: a constant 200 requests/s for 30 s, then a ramp to saturation.

The server runs in its own process (`finops-ml serve --model M`: uvicorn, uvloop + httptools, no access log, one
worker unless --workers); Locust (headless, FastHttpUser, `pip install -e '.[bench]'`) drives it from a second
process, one request = one instance drawn from a pool of realistic ones built from the run's feature views:
  forecast          a (service, project) of the stored forecast
  forecast-history  a series' last 91 daily costs (the model runs on that series)
  anomaly           a cell's resources over the 63 days ending on the day judged
  labeler           one resource's metadata
Latencies are Locust's own per-request measurements (client side: they include the HTTP round trip), exact rather
than Locust's rounded percentiles; the first seconds of each run (users starting) are left out.

    python -m benchmarks.serving_latency --run-dir out      # after `make run` (or finops-ml run --out out)
    python -m benchmarks.serving_latency --run-dir out --models anomaly --ramp 200,400,800 --duration 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from testsupport.net import free_port, wait_for_http
from testsupport.services import anomaly_bodies

HERE = Path(__file__).resolve().parent
FINOPS_ML = Path(sys.executable).parent / "finops-ml"
LOCUST = Path(sys.executable).parent / "locust"
WARMUP_S = 3.0
FORECAST_HISTORY = 91


def features_dir(run_dir: Path) -> Path:
    found = sorted((run_dir / "pipeline_root").glob("*/build-features"), key=lambda p: p.stat().st_mtime)
    if not found or not (run_dir / "registry").is_dir():
        sys.exit(f"error: {run_dir} is not the output of a training run (no registry/ or pipeline_root/*/"
                 f"build-features); run `finops-ml run --out {run_dir}` first.")
    return found[-1]


def pools(run_dir: Path, size: int, seed: int) -> dict[str, dict]:
    """Request bodies for each benchmark target, from the run's feature views."""
    rng = np.random.default_rng(seed)
    fd = features_dir(run_dir)
    out: dict[str, dict] = {}
    stored = pd.read_csv(next((run_dir / "registry" / "cost-forecast").glob("v*/forecast.csv")))
    keys = stored[["service", "project_id"]].drop_duplicates().to_numpy()
    out["forecast"] = [{"instances": [{"service": s, "project_id": p}]} for s, p in keys]

    daily = pd.read_parquet(fd / "daily_cost")
    from finops_ml.models.forecast import SeriesPanel

    panel = SeriesPanel.from_daily(daily)
    end = str(panel.days[-1].date())
    out["forecast-history"] = [
        {"instances": [{"service": s, "project_id": p, "history": panel.values[i, -FORECAST_HISTORY:].tolist(),
                        "end_date": end}]}
        for i, (s, p) in enumerate(zip(panel.keys.service, panel.keys.project_id))
        if panel.values[i, -FORECAST_HISTORY:].sum() > 0]

    out["anomaly"] = anomaly_bodies(pd.read_parquet(fd / "resource_daily_cost"), size, rng)

    res = pd.read_parquet(fd / "resources")
    out["labeler"] = [{"instances": [{
        "resource_name": r.resource_name, "project_id": r.project_id, "service": r.service,
        "project_name": r.project_name, "skus": r.skus, "region": r.region, "env": r.env, "workload": r.workload}]}
        for r in res.itertuples()]
    return out


def start_server(run_dir: Path, model: str, workers: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([str(FINOPS_ML), "serve", "--model", model, "--registry", str(run_dir / "registry"),
                             "--port", str(port), "--workers", str(workers)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(base + "/health", timeout=120, proc=proc)
    except RuntimeError as exc:
        proc.terminate()
        sys.exit(f"error: {exc}: {proc.stderr.read()}")
    return proc, base


def server_cpu_s(pid: int) -> float:
    """CPU seconds used so far by the server process and its workers."""
    import psutil  # installed with Locust

    proc = psutil.Process(pid)
    return sum(sum(p.cpu_times()[:2]) for p in [proc, *proc.children(recursive=True)])


def drive(base: str, pool_path: Path, rate: float, seconds: float, server_pid: int) -> dict:
    """Locust at `rate` requests/s for WARMUP_S + `seconds`; stats over the last `seconds`."""
    per_user = 5.0  # requests/s per simulated user (pacing by constant_throughput)
    users = max(1, int(round(rate / per_user)))
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    env = {**os.environ, "SERVE_BENCH_POOL": str(pool_path), "SERVE_BENCH_USER_RATE": str(rate / users),
           "SERVE_BENCH_OUT": str(out)}
    total = WARMUP_S + seconds
    cpu0, load0 = server_cpu_s(server_pid), os.getloadavg()[0]
    subprocess.run([str(LOCUST), "-f", str(HERE / "locust_serving.py"), "--headless", "--host", base,
                    "-u", str(users), "-r", str(max(users / 1.0, 1)), "-t", f"{total:.0f}s", "--only-summary",
                    "--stop-timeout", "5", "--loglevel", "ERROR"],
                   env=env, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cpu = server_cpu_s(server_pid) - cpu0
    load = max(load0, os.getloadavg()[0])
    records = np.array(json.loads(out.read_text()) or [[0, 0, 0]], float)
    out.unlink()
    start = records[:, 0].min() + WARMUP_S
    kept = records[records[:, 0] >= start]
    ok = kept[kept[:, 2] == 0]
    span = max(kept[:, 0].max() - start, 1e-9) if len(kept) else 1.0
    return {"target": rate, "achieved": len(kept) / span, "requests": len(kept), "errors": int(kept[:, 2].sum()),
            "cpu_ms": 1000 * cpu / max(len(records), 1), "load": load,
            "p50": float(np.percentile(ok[:, 1], 50)) if len(ok) else float("nan"),
            "p99": float(np.percentile(ok[:, 1], 99)) if len(ok) else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", type=Path, default=Path("out"), help="output of `finops-ml run` (registry + features)")
    ap.add_argument("--models", default="forecast,anomaly,labeler,forecast-history")
    ap.add_argument("--rate", type=float, default=200.0, help="requests/s of the constant-rate run")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of the constant-rate run")
    ap.add_argument("--ramp", default="200,400,600,800,1200,1600,2400",
                    help="target rates of the ramp (10 s each; stops after the first step that fails)")
    ap.add_argument("--ramp-step-s", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=1, help="server processes")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not LOCUST.exists():
        sys.exit("error: Locust is not installed; pip install -e '.[bench]'.")
    console = Console(width=200)
    bodies = pools(args.run_dir, 300, args.seed)
    steady, ramps = {}, {}
    for target in args.models.split(","):
        model = "forecast" if target.startswith("forecast") else target
        pool = Path(tempfile.mkdtemp()) / f"{target}.json"
        route = "/predict"
        pool.write_text(json.dumps({"route": route, "bodies": bodies[target]}))
        proc, base = start_server(args.run_dir, model, args.workers)
        try:
            console.print(f"[bold]{target}[/]: {len(bodies[target])} distinct requests, {args.rate:.0f}/s for "
                          f"{args.duration:.0f} s ...")
            steady[target] = drive(base, pool, args.rate, args.duration, proc.pid)
            ramps[target] = []
            for rate in [float(r) for r in args.ramp.split(",")]:
                step = drive(base, pool, rate, args.ramp_step_s, proc.pid)
                ramps[target].append(step)
                console.print(f"  ramp {rate:.0f}/s: achieved {step['achieved']:.0f}/s, p99 {step['p99']:.1f} ms, "
                              f"errors {step['errors']}")
                if step["errors"] or step["achieved"] < 0.95 * rate:
                    break
        finally:
            proc.terminate()
            proc.wait(timeout=20)

    table = Table(title=f"Prediction server, {args.rate:.0f} requests/s for {args.duration:.0f} s "
                        f"({args.workers} worker{'s' if args.workers > 1 else ''}, {os.cpu_count()} CPUs)")
    for col in ("model", "requests", "achieved req/s", "p50 ms", "p99 ms", "errors", "server CPU ms/req",
                "load avg", "saturation req/s", "p99 ms there", "top req/s with p99 < 20 ms"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for target, s in steady.items():
        held = [r for r in ramps[target] if not r["errors"] and r["achieved"] >= 0.95 * r["target"]]
        best = max(held, key=lambda r: r["achieved"]) if held else None
        table.add_row(target, f"{s['requests']:,}", f"{s['achieved']:.0f}", f"{s['p50']:.2f}", f"{s['p99']:.2f}",
                      str(s["errors"]), f"{s['cpu_ms']:.2f}", f"{s['load']:.1f}",
                      f"{best['achieved']:.0f}" if best else "-",
                      f"{best['p99']:.1f}" if best else "-",
                      max((f"{r['achieved']:.0f}" for r in held if r["p99"] < 20), key=float, default="-"))
    console.print(table)
    console.print_json(json.dumps({"steady": steady, "ramps": ramps}))
    console.print("server CPU ms/req: the server's CPU time over the requests it answered (all of the run); load avg: "
                  "the machine's 1-minute load average (other work on the machine shows there).")
    console.print("saturation: the highest rate of the ramp held (>= 95% of its target, no error); the ramp stops "
                  "after the first step that is not held.")


if __name__ == "__main__":
    main()

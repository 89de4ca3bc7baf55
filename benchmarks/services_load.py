"""Open-loop load on the three prediction services at once: p50 / p99 latency and errors per service.

The services are started as deploy/compose.yaml describes them (testsupport/services.py: one process per model,
`python -m finops_ml.serving` with the service's environment, on free ports of 127.0.0.1). One generator process
(asyncio + httpx on uvloop) sends each service `--rate` requests/s on a fixed schedule, whatever the answers do
(open loop: a slow answer does not slow the sender down, so queueing shows in the latencies instead of hiding as a
lower rate). A latency is measured from the request's scheduled time to its answer: time a request waited for the
generator counts too. One request = one instance drawn from a pool of realistic ones (a stored forecast's series, a
cell's resources over 63 days, one resource). The first `--warmup` seconds are left out of the figures.

    python -m benchmarks.services_load                          # a small registry trained first (~20 s)
    python -m benchmarks.services_load --run-dir out --rate 100 --duration 30   # after `make run`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from testsupport.services import SERVING, request_pools, run_services


async def _drive_one(base: str, bodies: list[dict], rate: float, seconds: float, t0: float,
                     timeout: float) -> dict:
    import httpx

    n = int(rate * seconds)
    records: list[tuple[float, float, int, str]] = []  # (scheduled offset s, latency ms, status, error)
    lags: list[float] = []
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as client:
        async def send(i: int, at: float) -> None:
            status, err = 0, ""
            try:
                r = await client.post("/predict", json=bodies[i % len(bodies)])
                status = r.status_code
                if status != 200:
                    err = r.text[:200]
            except Exception as exc:  # a timeout, a reset: counted as an error
                err = f"{exc.__class__.__name__}: {exc}"
            records.append((at - t0, 1000 * (time.perf_counter() - at), status, err))

        tasks = []
        for i in range(n):
            at = t0 + i / rate
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            lags.append(time.perf_counter() - at)
            tasks.append(asyncio.create_task(send(i, at)))
        await asyncio.gather(*tasks)
    return {"records": records, "lags": lags}


async def _drive(urls: dict[str, str], pools: dict[str, list], rate: float, seconds: float, timeout: float) -> dict:
    t0 = time.perf_counter() + 0.2
    runs = await asyncio.gather(*(_drive_one(urls[k], pools[k], rate, seconds, t0, timeout) for k in urls))
    return dict(zip(urls, runs))


def drive(urls: dict[str, str], pools: dict[str, list], rate: float, seconds: float, warmup: float = 0.0,
          timeout: float = 10.0) -> dict[str, dict]:
    """Each service of URLS at RATE requests/s for WARMUP + SECONDS; figures per service over the last SECONDS."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    raw = runner(_drive(urls, pools, rate, warmup + seconds, timeout))
    out = {}
    for kind, run in raw.items():
        kept = [r for r in run["records"] if r[0] >= warmup]
        ok = np.array([r[1] for r in kept if r[2] == 200])
        errors: dict[str, int] = {}
        for r in kept:
            if r[2] != 200:
                key = str(r[2]) if r[2] else r[3].split(":")[0]
                errors[key] = errors.get(key, 0) + 1
        done = [r[0] + r[1] / 1000 for r in kept]
        span = (max(done) - min(r[0] for r in kept)) if kept else 1.0
        out[kind] = {"target": rate, "requests": len(kept), "achieved": len(kept) / max(span, 1e-9),
                     "errors": sum(errors.values()), "by_error": errors,
                     "p50": float(np.percentile(ok, 50)) if len(ok) else float("nan"),
                     "p99": float(np.percentile(ok, 99)) if len(ok) else float("nan"),
                     "max": float(ok.max()) if len(ok) else float("nan"),
                     "sender_lag_p99_ms": 1000 * float(np.percentile(run["lags"], 99)) if run["lags"] else 0.0}
    return out


def _registry_and_features(args) -> tuple[Path, object, object]:
    import pandas as pd

    if args.run_dir is not None:
        from benchmarks.serving_latency import features_dir

        fd = features_dir(args.run_dir)
        return (args.run_dir / "registry", pd.read_parquet(fd / "resource_daily_cost"),
                pd.read_parquet(fd / "resources"))
    from testsupport.registry import train_small_registry

    print("training a small registry (the test's: 11 months, 1 plant) ...", flush=True)
    trained = train_small_registry(Path(tempfile.mkdtemp(prefix="services-load-")))
    return trained["registry"], trained["resource_daily_cost"], trained["resources"]


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", type=Path, default=None,
                    help="output of `finops-ml run` (registry + features); default: train a small registry first")
    ap.add_argument("--rate", type=float, default=50.0, help="requests/s sent to EACH service")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds measured (after the warm-up)")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds sent but left out of the figures")
    ap.add_argument("--services", default=",".join(SERVING))
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds before a request counts as an error")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    names = [s for s in args.services.split(",") if s]
    unknown = set(names) - set(SERVING)
    if unknown:
        sys.exit(f"error: --services {','.join(sorted(unknown))}: not one of {', '.join(SERVING)}.")
    registry, rdc, resources = _registry_and_features(args)
    pools = request_pools(registry, rdc, resources, size=300, seed=args.seed)
    console = Console(width=160)
    with run_services(registry, Path(tempfile.mkdtemp(prefix="services-logs-")), names) as urls:
        console.print(f"{len(urls)} services up; {args.rate:g} req/s each for {args.warmup:g} + "
                      f"{args.duration:g} s ...")
        load0 = os.getloadavg()[0]
        figures = drive(urls, pools, args.rate, args.duration, args.warmup, args.timeout)
        load = max(load0, os.getloadavg()[0])
    table = Table(title=f"Three services, open loop at {args.rate:g} req/s each for {args.duration:g} s "
                        f"({os.cpu_count()} CPUs, 1-min load average up to {load:.1f})")
    for col in ("service", "requests", "achieved req/s", "p50 ms", "p99 ms", "max ms", "errors", "sender lag p99 ms"):
        table.add_column(col, justify="left" if col == "service" else "right")
    for kind, f in figures.items():
        errors = str(f["errors"]) + (f" ({', '.join(f'{k}: {v}' for k, v in f['by_error'].items())})"
                                     if f["errors"] else "")
        table.add_row(kind, f"{f['requests']:,}", f"{f['achieved']:.1f}", f"{f['p50']:.1f}", f"{f['p99']:.1f}",
                      f"{f['max']:.1f}", errors, f"{f['sender_lag_p99_ms']:.1f}")
    console.print(table)
    console.print("latency: from the request's scheduled send time to its answer (open loop); sender lag: how late "
                  "the generator sent (a large one means the generator, not the server, was short of CPU).")
    if args.json is not None:
        args.json.write_text(json.dumps({"rate": args.rate, "duration": args.duration, "load": load,
                                         "services": figures}, indent=2))


if __name__ == "__main__":
    main()

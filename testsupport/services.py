"""The three prediction services of deploy/compose.yaml, started as processes on 127.0.0.1 (tests, benchmarks).

Each server runs what deploy/Dockerfile.serving runs (its CMD, `python -m finops_ml.serving`) with the environment
compose.yaml gives its container; only the paths and ports of the host differ: FINOPS_REGISTRY points at a local
registry and AIP_HTTP_PORT at a free port.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from testsupport.net import free_port, wait_for_http

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "deploy" / "compose.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile.serving"
SERVING = ("forecast", "anomaly", "labeler")


def compose() -> dict:
    import yaml

    return yaml.safe_load(COMPOSE.read_text())


def dockerfile_cmd(path: Path = DOCKERFILE) -> list[str]:
    """The exec-form CMD of a Dockerfile (its last one)."""
    cmds = [line.split(None, 1)[1] for line in path.read_text().splitlines() if line.startswith("CMD ")]
    return json.loads(cmds[-1])


def service_command() -> list[str]:
    """The serving image's CMD, with this interpreter for `python`."""
    cmd = dockerfile_cmd()
    return [sys.executable if cmd[0] == "python" else cmd[0], *cmd[1:]]


def service_env(name: str, registry: Path, port: int) -> dict[str, str]:
    """The environment of compose.yaml's service NAME, with the host's registry and port."""
    env = {k: str(v) for k, v in compose()["services"][name]["environment"].items()}
    env.update(FINOPS_REGISTRY=str(registry), AIP_HTTP_PORT=str(port))
    return env


@contextlib.contextmanager
def run_services(registry: Path, log_dir: Path, names=SERVING, timeout: float = 120.0,
                 extra_env: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """Start the services NAMES (default: the three) on free ports, wait for each /health, yield {name: base URL};
    stop them on exit. RuntimeError naming the service and the end of its log if one does not become healthy."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("AIP_", "FINOPS_"))}
    procs: dict[str, tuple[subprocess.Popen, Path]] = {}
    urls: dict[str, str] = {}
    try:
        for name in names:
            port = free_port()
            log = log_dir / f"{name}.log"
            with open(log, "w") as out:
                procs[name] = (subprocess.Popen(service_command(), stdout=out, stderr=subprocess.STDOUT,
                                                env={**base_env, **service_env(name, registry, port),
                                                     **(extra_env or {})}), log)
            urls[name] = f"http://127.0.0.1:{port}"
        for name, (proc, log) in procs.items():
            try:
                wait_for_http(urls[name] + "/health", timeout=timeout, proc=proc)
            except RuntimeError as exc:
                raise RuntimeError(f"service {name}: {exc}: {log.read_text()[-2000:]}") from None
        yield urls
    finally:
        for proc, _ in procs.values():
            proc.terminate()
        for proc, _ in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


ANOMALY_WINDOW = 63  # days of a cell sent to the anomaly service


def anomaly_bodies(resource_daily_cost, size: int, rng, attempts: int | None = None) -> list[dict]:
    """Up to `size` one-instance anomaly request bodies from `attempts` (default `size`) random draws: a random
    cell's resources over the ANOMALY_WINDOW days ending on a random day, kept when its last day has cost."""
    import numpy as np
    import pandas as pd

    rdc = resource_daily_cost.assign(day=pd.to_datetime(resource_daily_cost.day))
    days = pd.date_range(rdc.day.min(), rdc.day.max(), freq="D")
    cells = [(key, cell.pivot_table(index="resource_name", columns="day", values="net_cost", aggfunc="sum"))
             for key, cell in rdc.groupby(["service", "project_id"])]
    bodies = []
    for _ in range(size if attempts is None else attempts):
        if len(bodies) >= size:
            break
        (service, project), wide = cells[rng.integers(len(cells))]
        end = days[rng.integers(ANOMALY_WINDOW, len(days))]
        wide = wide.reindex(columns=pd.date_range(end=end, periods=ANOMALY_WINDOW, freq="D"))
        wide = wide[wide.notna().any(axis=1)]
        if wide.empty or wide.iloc[:, -1].isna().all():
            continue
        bodies.append({"instances": [{
            "service": service, "project_id": project, "end_date": str(end.date()),
            "resources": [{"resource_name": n, "daily_costs": [None if np.isnan(v) else round(float(v), 6)
                                                               for v in row]}
                          for n, row in zip(wide.index, wide.to_numpy())]}]})
    return bodies


def request_pools(registry: Path, resource_daily_cost, resources, size: int = 200, seed: int = 0) -> dict[str, list]:
    """Realistic one-instance request bodies per service: a stored forecast's series, a cell's resources over the
    63 days ending on a day with cost, one resource's metadata (from the feature views of the registry's run)."""
    import numpy as np
    import pandas as pd

    from finops_ml.platform.registry import LocalRegistry

    rng = np.random.default_rng(seed)
    forecast_dir = LocalRegistry(registry).model_dir("cost-forecast", "champion")
    stored = pd.read_csv(forecast_dir / "forecast.csv")[["service", "project_id"]].drop_duplicates()
    pools: dict[str, list] = {"forecast": [{"instances": [{"service": s, "project_id": p}]}
                                           for s, p in stored.itertuples(index=False)]}
    pools["anomaly"] = anomaly_bodies(resource_daily_cost, size, rng, attempts=size * 4)
    fields = ["resource_name", "project_id", "service", "project_name", "skus", "region", "env", "workload"]
    pools["labeler"] = [{"instances": [{k: v for k, v in zip(fields, row) if not (v is None or v != v)}]}
                        for row in resources[fields].itertuples(index=False)]
    return pools

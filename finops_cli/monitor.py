"""`finops-ml monitor`: billing data against the champions' training references (finops_ml.training.monitoring)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def monitor(
    source: str = typer.Argument(..., help="Billing events to compare: a JSONL / Parquet / CSV (FOCUS) file or glob, "
                                           "or bq://project.dataset.table."),
    out: Path = typer.Option(Path("out/monitor"), help="Directory for the events, feature views and monitoring.json."),
    registry: Optional[Path] = typer.Option(None, help="Local registry holding the champions (default: the config's "
                                                       "registry.path under out/ of the last run, out/registry)."),
    config: Optional[Path] = typer.Option(None, help="YAML config (default: configs/local.yaml): thresholds, alerts."),
    alert: bool = typer.Option(False, "--alert/--no-alert", help="Send drift alerts through the stream's channels."),
):
    """Compare billing data with the champions' training references: PSI per feature, the anomaly alarm rate, the
    forecast's interval coverage on months closed since; OUT/monitoring.json and a table."""
    from finops_ml.config import load_config
    from finops_ml.training import steps

    cfg = load_config(config)
    cfg = cfg.with_updates("The option --no-alert", monitoring={"alert": alert})
    registry_dir = registry or Path("out") / cfg.registry.path
    t0 = time.perf_counter()
    steps.ingest_step(source, "", str(out / "events"))
    views = [str(out / f"{name}.parquet") for name in ("daily_cost", "resource_daily_cost", "resources")]
    steps.features_step(str(out / "events"), *views)
    section = steps.monitor_step(*views, str(registry_dir), cfg, f"monitor-{time.strftime('%Y%m%d-%H%M%S')}", str(out))
    print_monitoring(section)
    console.print(f"monitoring: {out / 'monitoring.json'}  [dim]({time.perf_counter() - t0:.1f} s)[/]")


def print_monitoring(section: dict) -> None:
    table = Table(title=f"Model monitoring: {section.get('statistic', 'PSI')} against the champions' references "
                        f"(last {section.get('window_days')} days)")
    for col in ("model", "check", "value", "threshold", "status"):
        table.add_column(col)
    for name, m in section.get("models", {}).items():
        if not m.get("features"):
            table.add_row(name, "-", "-", "-", f"{m['status']}: {m.get('reason')}")
        for f in m.get("features", []):
            table.add_row(name, f["feature"], "n/a" if f["psi"] is None else f"{f['psi']:.3f}", str(f["threshold"]),
                          _colour(f["status"]))
        alarm = m.get("scores", {}).get("alarm_rate")
        if alarm:
            table.add_row(name, "alarm rate ratio", f"{alarm['alarm_rate_ratio']:.2f}", str(alarm["threshold"]),
                          _colour(alarm["status"]))
        err = m.get("scores", {}).get("interval_error")
        if err:
            value = "n/a" if err["coverage"] is None else f"{err['coverage']:.2f}"
            table.add_row(name, "recent interval coverage", value, str(err.get("threshold", "-")),
                          _colour(err["status"]) + (f": {err['reason']}" if err.get("reason") else ""))
    console.print(table)


def _colour(status: str) -> str:
    return {"drift": "[red]drift[/]", "stable": "[green]stable[/]", "watch": "[yellow]watch[/]"}.get(status, status)

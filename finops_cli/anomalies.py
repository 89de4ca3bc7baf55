"""`finops-ml detect` (anomalies in any CSV series) and `finops-ml feedback` (verdicts used at the next training)."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import typer
from rich.console import Console

from finops_ml.errors import FinopsError
from finops_ml.fileio import atomic_path

console = Console()


def detect(
    input: Path = typer.Option(..., "--input", help="CSV with columns timestamp,value[,series_id], any cadence."),
    output: Path = typer.Option(..., "--output", help="CSV written: timestamp,[series_id,]score,is_anomaly,expected."),
    threshold: float = typer.Option(5.0, help="Robust z-score from which a single point is an anomaly."),
    direction: str = typer.Option("both", help="both: rises and drops; up: rises only (cost spikes); down: drops."),
    budget: float = typer.Option(0.005, help="Largest share of a series' points flagged as single-point anomalies "
                                             "(alarm budget; 0: none). Lasting deviations are not counted."),
):
    """Flag anomalies in any cost or usage series (5-minute, hourly, daily ...): no labels, no model needed."""
    from finops_ml.models.series import SeriesAnomalyDetector, read_series_csv
    from finops_ml.models.series import detect as run_detect

    t0 = time.perf_counter()
    detector = SeriesAnomalyDetector(threshold=threshold, direction=direction, budget=budget)
    frame = read_series_csv(input)
    scored = run_detect(frame, detector)
    cols = ["timestamp", *(["series_id"] if "series_id" in scored.columns else []), "score", "is_anomaly", "expected"]
    scored = scored[cols].assign(timestamp=scored.timestamp.dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                 score=scored.score.round(4), expected=scored.expected.round(6))
    with atomic_path(output) as tmp:
        scored.to_csv(tmp, index=False)
    series = scored["series_id"].nunique() if "series_id" in scored.columns else 1
    console.print(f"scored {len(scored):,} points of {series:,} series in {time.perf_counter() - t0:.1f} s: "
                  f"{int(scored.is_anomaly.sum()):,} anomalies -> {output}")


def feedback(
    anomaly_id: str = typer.Argument(..., help="The anomaly's id (in anomalies.csv, the report and every alert)."),
    verdict: str = typer.Option(..., help="expected (a planned change: not an anomaly) or unexpected (a real one)."),
    anomalies: Path = typer.Option(Path("out/anomalies.csv"), help="The run's anomalies (finops-ml run writes it)."),
    file: Path = typer.Option(Path("out/feedback.csv"), help="Feedback file; `finops-ml run` reads it next time."),
    note: str = typer.Option("", help="Why (kept with the verdict)."),
):
    """Mark an anomaly expected or unexpected; the next training learns from it."""
    from finops_ml.models.anomaly import FEEDBACK_COLUMNS, VERDICTS, read_feedback

    if verdict not in VERDICTS:
        raise FinopsError(f"--verdict must be one of {', '.join(VERDICTS)}, not {verdict!r}.")
    if not anomalies.exists():
        raise FinopsError(f"Anomalies file {anomalies} does not exist; run `finops-ml run` first or pass --anomalies.")
    found = pd.read_csv(anomalies, dtype=str)
    match = found[found.anomaly_id == anomaly_id]
    if match.empty:
        raise FinopsError(f"Anomaly {anomaly_id} is not in {anomalies}; copy the id from the report or an alert.")
    row = match.iloc[0]
    mark = {"anomaly_id": anomaly_id, "day": row.day[:10], "service": row.service, "project_id": row.project_id,
            "verdict": verdict, "note": note, "marked_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    existing = read_feedback(file) if file.exists() else pd.DataFrame(columns=FEEDBACK_COLUMNS)
    updated = pd.concat([existing, pd.DataFrame([mark])], ignore_index=True)[FEEDBACK_COLUMNS]
    with atomic_path(file) as tmp:
        updated.to_csv(tmp, index=False)
    console.print(f"{anomaly_id} ({mark['day']} {mark['service']} / {mark['project_id']}) marked {verdict}; "
                  f"{len(updated)} verdict(s) in {file}, used by the next `finops-ml run`.")

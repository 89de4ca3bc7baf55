"""The run's results: `summary.json` for machines, the dashboard `report.html` for people
(finops_ml.training.dashboard) and `value.json`, the business case (finops_ml.training.value)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from finops_ml.config import ValueConfig
from finops_ml.models.catalogue import ANOMALY, FORECAST, LABELER, MODELS
from finops_ml.training.dashboard import read_feedback_file, summary_tables, write_dashboard
from finops_ml.training.incidents import INCIDENT_COLUMNS
from finops_ml.training.value import value_report

GATE_ORDER = tuple(gate for spec in MODELS.values() for gate in spec.gates)
__all__ = ["GATE_ORDER", "build_summary", "build_value", "write_dashboard", "read_feedback_file"]


def build_summary(ingest_summary: dict, evaluations: dict[str, dict], eval_dirs: dict[str, Path] | None = None,
                  feedback: pd.DataFrame | None = None) -> dict:
    gates = {}
    for evaluation in evaluations.values():
        gates.update(evaluation["gates"])
    labeler = evaluations[LABELER]["metrics"]
    windows = [e["data_window"] for e in evaluations.values() if e.get("data_window")]
    summary = {
        "gates": {g: gates[g] for g in GATE_ORDER if g in gates},
        "all_gates_passed": all(g["passed"] for g in gates.values()),
        # a model the data could not train: its one-sentence reason (it has no metrics and is not registered)
        "not_trained": {name: e["not_trained_reason"] for name, e in evaluations.items() if not e.get("trained", True)},
        "label_compliance_before": labeler.get("label_compliance_before"),
        "rows": {"read": ingest_summary["read"], "ingested": ingest_summary["rows"],
                 "quarantined": ingest_summary["quarantined"], "duplicates": ingest_summary["duplicates"]},
        "reconciliation_diff": ingest_summary["reconciliation_diff"],
        "total_net_cost": ingest_summary["total_net_cost"],
        "metrics": {name: e["metrics"] for name, e in evaluations.items()},
        "data_window": ({"start": min(w["start"] for w in windows), "end": max(w["end"] for w in windows)}
                        if windows else None),
        "config_digests": {name: e.get("config_digest") for name, e in evaluations.items()},
    }
    if eval_dirs:
        # budget rows, monthly forecast intervals and anomaly incidents: what the dashboard's tables show
        summary.update(summary_tables({k: Path(v) for k, v in eval_dirs.items()}, feedback))
    return summary


def build_value(summary: dict, eval_dirs: dict[str, Path], cfg: ValueConfig) -> dict:
    """OUT/value.json from the summary (its incidents and metrics) and the evaluations' tables."""
    incidents = pd.DataFrame(summary.get("anomaly_incidents") or [], columns=INCIDENT_COLUMNS)
    adir, fdir, ldir = (Path(eval_dirs[k]) for k in (ANOMALY, FORECAST, LABELER))
    cells = adir / "cells.parquet"
    days = pd.read_parquet(cells, columns=["day"])["day"] if cells.exists() else pd.Series(dtype="datetime64[ns]")
    holdout = pd.read_parquet(fdir / "holdout.parquet") if (fdir / "holdout.parquet").exists() else None
    labelled_path = ldir / "labelled.parquet"
    labelled = 0
    if labelled_path.exists():
        frame = pd.read_parquet(labelled_path)
        applied = [c for c in frame.columns if c.endswith("_applied")]
        labelled = int(frame[applied].any(axis=1).sum()) if applied else 0
    return value_report(summary, incidents, days, holdout, labelled, cfg)

"""The metrics the gates measure (definitions in DESIGN.md)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def wape(actual, forecast) -> float:
    actual, forecast = np.asarray(actual, float), np.asarray(forecast, float)
    denom = np.abs(actual).sum()
    return float(np.abs(actual - forecast).sum() / denom) if denom > 0 else float("nan")


def forecast_accuracy(actual, forecast) -> float:
    """1 - WAPE."""
    return 1.0 - wape(actual, forecast)


def mape(actual, forecast) -> float:
    actual, forecast = np.asarray(actual, float), np.asarray(forecast, float)
    mask = np.abs(actual) > 0
    return float(np.mean(np.abs((actual[mask] - forecast[mask]) / actual[mask]))) if mask.any() else float("nan")


def mase(actual, forecast, history, season: int = 7) -> float:
    """Mean absolute error scaled by the in-sample error of the seasonal-naive forecast."""
    history = np.asarray(history, float)
    scale = np.mean(np.abs(history[season:] - history[:-season])) if len(history) > season else float("nan")
    err = np.mean(np.abs(np.asarray(actual, float) - np.asarray(forecast, float)))
    return float(err / scale) if scale > 0 else float("nan")


def precision_recall_f1(truth, predicted) -> tuple[float, float, float]:
    truth, predicted = np.asarray(truth, bool), np.asarray(predicted, bool)
    tp = np.sum(truth & predicted)
    precision = tp / predicted.sum() if predicted.sum() else 0.0
    recall = tp / truth.sum() if truth.sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return float(precision), float(recall), float(f1)


def _runs(flags: pd.DataFrame) -> pd.DataFrame:
    """Consecutive flagged days of one series as events: series, start, end."""
    flags = flags.sort_values(["service", "project_id", "day"])
    new_run = (flags.groupby(["service", "project_id"])["day"].diff() != pd.Timedelta(days=1))
    flags = flags.assign(run=new_run.cumsum())
    return flags.groupby("run").agg(service=("service", "first"), project_id=("project_id", "first"),
                                    start=("day", "min"), end=("day", "max")).reset_index(drop=True)


def event_metrics(cells: pd.DataFrame) -> dict:
    """Event-wise F1 (a run of anomalous days counts once) and detection delay in days.

    `cells` has day, service, project_id, truth (bool), predicted (bool).
    """
    true_runs = _runs(cells[cells.truth])
    pred_runs = _runs(cells[cells.predicted])
    predicted_days = cells[cells.predicted].groupby(["service", "project_id"])["day"].apply(set).to_dict()
    true_days = cells[cells.truth].groupby(["service", "project_id"])["day"].apply(set).to_dict()
    detected, delays = 0, []
    for r in true_runs.itertuples():
        hits = sorted(d for d in predicted_days.get((r.service, r.project_id), ()) if r.start <= d <= r.end)
        if hits:
            detected += 1
            delays.append((hits[0] - r.start).days)
    correct = sum(
        any(r.start <= d <= r.end for d in true_days.get((r.service, r.project_id), ())) for r in pred_runs.itertuples()
    )
    recall = detected / len(true_runs) if len(true_runs) else 0.0
    precision = correct / len(pred_runs) if len(pred_runs) else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"event_precision": precision, "event_recall": recall, "event_f1": f1,
            "true_events": int(len(true_runs)), "predicted_events": int(len(pred_runs)),
            "mean_detection_delay_days": float(np.mean(delays)) if delays else float("nan")}

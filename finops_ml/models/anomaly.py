"""Cost anomaly detection on daily cells (day x service x project).

Robust statistics give each cell an expected cost from its own recent past only: the median of the
`window_days` de-seasonalised values that end a week before the cell (weekday and month-end factors learnt per series), and a
robust spread (IQR). An Isolation Forest, fitted on the training cells, scores how unusual a cell's
(robust z, log ratio, 3-day log ratio) is; only cost increases count. The decision threshold is the one
that maximises F1 against the labelled anomalies of the training window; it is never tuned on the holdout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest

from finops_ml.metrics import event_metrics, precision_recall_f1

FEATURES = ["robust_z", "log_ratio", "log_ratio_3d"]
KEYS = ["service", "project_id"]
BASELINE_GAP_DAYS = 7


def _seasonal_factors(g: pd.DataFrame) -> tuple[np.ndarray, float]:
    """Weekday factors (7) and a month-end factor of one series, robustly, from positive days."""
    pos = g[g.net_cost > 0]
    if len(pos) < 28:
        return np.ones(7), 1.0
    overall = pos.net_cost.median()
    dow = pos.groupby(pos.day.dt.dayofweek).net_cost.median().reindex(range(7)).fillna(overall) / overall
    normal, me = pos[~pos.month_end], pos[pos.month_end]
    month_end = float(np.clip(me.net_cost.median() / normal.net_cost.median(), 0.5, 5.0)) if len(me) >= 3 else 1.0
    return np.clip(dow.to_numpy(), 0.2, 3.0), month_end


@dataclass
class CostAnomalyDetector:
    window_days: int = 28
    n_estimators: int = 200
    seed: int = 42
    threshold_: float = float("nan")
    forest_: IsolationForest | None = None
    factors_: dict = field(default_factory=dict)

    def features(self, daily: pd.DataFrame) -> pd.DataFrame:
        """Per-cell features from each series' own past (causal: a cell never sees itself or the future)."""
        daily = daily.assign(day=pd.to_datetime(daily["day"])).sort_values([*KEYS, "day"]).reset_index(drop=True)
        daily["month_end"] = daily.day.dt.day > daily.day.dt.days_in_month - 2
        out = []
        for key, g in daily.groupby(KEYS, sort=False):
            dow, me = self.factors_.get(key) or _seasonal_factors(g)
            season = dow[g.day.dt.dayofweek.to_numpy()] * np.where(g.month_end, me, 1.0)
            y = g.net_cost.to_numpy()
            flat = pd.Series(y / season)
            # The baseline ends a week before the cell, so a shift or drift in progress does not hide itself.
            past = flat.shift(BASELINE_GAP_DAYS).rolling(self.window_days, min_periods=7)
            base = past.median().to_numpy()
            spread = ((past.quantile(0.75) - past.quantile(0.25)) / 1.349).to_numpy()
            expected = base * season
            scale = np.maximum(spread * season, 0.03 * expected + 0.5)
            log_ratio = np.log((y + 1.0) / (expected + 1.0))
            # Resources that were not in the baseline explain a rise: new spend (reported), not an anomaly.
            known = g.resources.shift(BASELINE_GAP_DAYS).rolling(self.window_days, min_periods=1).max()
            out.append(g.assign(
                new_resources=(g.resources - known.fillna(g.resources)).clip(lower=0).to_numpy(),
                expected=expected,
                robust_z=np.clip((y - expected) / scale, -50, 50),
                log_ratio=log_ratio,
                log_ratio_3d=pd.Series(log_ratio).rolling(3, min_periods=1).mean().to_numpy(),
            ))
        cells = pd.concat(out, ignore_index=True)
        return cells[cells.expected.notna()].reset_index(drop=True)

    def fit(self, daily: pd.DataFrame, truth: pd.Series | None = None) -> "CostAnomalyDetector":
        """Learn seasonal factors and the forest on the training cells; pick the threshold with the labels."""
        daily = daily.assign(day=pd.to_datetime(daily["day"]))
        daily["month_end"] = daily.day.dt.day > daily.day.dt.days_in_month - 2
        self.factors_ = {key: _seasonal_factors(g) for key, g in daily.groupby(KEYS)}
        cells = self.features(daily)
        self.forest_ = IsolationForest(n_estimators=self.n_estimators, random_state=self.seed, n_jobs=1)
        self.forest_.fit(cells[FEATURES].to_numpy())
        scores = self._score(cells)
        if truth is None:
            self.threshold_ = float(np.quantile(scores, 0.98))
            return self
        labels = label_cells(cells, truth)
        self.threshold_ = best_threshold(scores, labels)
        return self

    def _score(self, cells: pd.DataFrame) -> np.ndarray:
        raw = -self.forest_.score_samples(cells[FEATURES].to_numpy())
        # Cost anomalies are increases of established spend.
        return np.where((cells.log_ratio > 0) & (cells.new_resources == 0), raw, 0.0)

    def score(self, daily: pd.DataFrame) -> pd.DataFrame:
        cells = self.features(daily)
        cells["score"] = self._score(cells)
        cells["is_anomaly"] = cells.score >= self.threshold_
        cells["impact"] = np.where(cells.is_anomaly, cells.net_cost - cells.expected, 0.0)
        return cells


def label_cells(cells: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    """Ground truth per cell: True where a material injected anomaly touched it."""
    material = truth[truth.material].assign(day=lambda t: pd.to_datetime(t.date))
    marks = set(zip(material.day, material.service, material.project_id))
    return np.fromiter(((d, s, p) in marks for d, s, p in zip(cells.day, cells.service, cells.project_id)),
                       bool, len(cells))


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    candidates = np.unique(np.quantile(scores[scores > 0], np.linspace(0.5, 0.999, 300)))
    f1s = [precision_recall_f1(labels, scores >= c)[2] for c in candidates]
    return float(candidates[int(np.argmax(f1s))])


def train_and_evaluate(daily: pd.DataFrame, truth: pd.DataFrame, holdout_months: int, window_days: int,
                       n_estimators: int, seed: int) -> dict:
    """Fit on the training window (threshold from its labels), evaluate on the last months."""
    daily = daily.assign(day=pd.to_datetime(daily["day"]))
    cutoff = daily.day.max() - pd.DateOffset(months=holdout_months)
    cutoff = cutoff + pd.offsets.MonthEnd(0)
    train = daily[daily.day <= cutoff]
    detector = CostAnomalyDetector(window_days, n_estimators, seed).fit(train, truth)
    cells = detector.score(daily)  # features are causal, so scoring all days never leaks the future
    cells["truth"] = label_cells(cells, truth)
    cells["predicted"] = cells.is_anomaly
    test = cells[cells.day > cutoff]
    train_cells = cells[cells.day <= cutoff]
    precision, recall, f1 = precision_recall_f1(test.truth, test.predicted)
    _, _, train_f1 = precision_recall_f1(train_cells.truth, train_cells.predicted)
    metrics = {
        "anomaly_f1": f1, "precision": precision, "recall": recall, "train_f1": train_f1,
        "threshold": detector.threshold_, "holdout_cells": int(len(test)),
        "holdout_anomalous_cells": int(test.truth.sum()), "flagged_cells": int(test.predicted.sum()),
        **event_metrics(test[["day", "service", "project_id", "truth", "predicted"]]),
        "holdout_start": str((cutoff + pd.Timedelta(days=1)).date()), "train_end": str(cutoff.date()),
    }
    final = CostAnomalyDetector(window_days, n_estimators, seed).fit(daily, truth)
    return {"metrics": metrics, "model": final, "cells": cells}

"""Evaluation of a fitted anomaly detector by injection: measurable on any export, with or without ground truth.

For each of `draws` seeded draws, labelled anomalies of every kind (finops_ml.synthetic.injector) are injected into
a copy of the holdout window, sized against each affected resource's own cost and variability; the detector scores
the training window followed by that copy (its features are causal, so the training days only give it history)
and is judged on the holdout's daily cells (day x service x project):

- cell-wise precision, recall and F1 against the material injected cell-days. A cell-day the injection changed
  without making it material (a small spike, the first days of a drift, the tail of a persisting level shift) is
  neither a positive nor a negative: it is left out. A cell-day that the injection made vanish (a resource that
  stops billing) is a positive the detector cannot flag unless it reports the cell;
- recall per kind and per direction (pooled over draws), event-wise F1 and detection delay
  (finops_ml.models.metrics.event_metrics), and per kind the share of anomalies found on at least one day;
- the alarm rate on the untouched holdout (share of its cells flagged): the precision side when there is no truth.

The figures are the mean over draws; `spread` holds their standard deviation, minimum and maximum.

Untouched cells of the data may hold real anomalies (on a generated export of seed 5, 164 of the 213 cells flagged
on the untouched holdout were material anomalies of the generator's truth, which the run was not given). Without
labels nobody can tell them from false alarms, so the cells flagged on the untouched holdout are left out of the
injected scoring (neither positive nor negative) and their share is reported on its own (`alarm_rate_clean`: the
precision side when there is no truth; feedback verdicts then say which were expected). That credit has a ceiling:
when more than `max_clean_alarm_rate` of the untouched cells alarm, they all count as false alarms, so a detector
that alarms everywhere cannot pass. `precision_counting_clean_alarms` is the pessimistic figure (every alarm on
an untouched cell counted false) beside it. The harness fits nothing. When no anomaly finds a place (no
resource of the holdout has `min_history_days` of history before it) it raises InsufficientData.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from finops_ml.errors import FinopsError, InsufficientData
from finops_ml.models.metrics import event_metrics, precision_recall_f1
from finops_ml.synthetic.injector import DIRECTION, KINDS, CostPanel, InjectionSpec, inject

CELL = ["day", "service", "project_id"]
SPREAD_METRICS = ("f1", "precision", "recall", "event_f1", "event_recall", "event_precision")


def spec_from_config(cfg) -> InjectionSpec:
    """The injector's settings from an AnomalyConfig (finops_ml.config): sizes and what is material."""
    return InjectionSpec(sigma_multiple=tuple(cfg.injection_sigma_multiple),
                         material_share=cfg.injection_material_share, min_impact_usd=cfg.injection_min_impact_usd)


def _scored_cells(detector, daily: pd.DataFrame, resources: pd.DataFrame | None, first: pd.Timestamp) -> pd.DataFrame:
    cells = detector.score(daily, resources)
    missing = [c for c in (*CELL, "is_anomaly") if c not in cells.columns]
    if missing:
        raise FinopsError(f"The detector's score() returned no {', '.join(missing)} column(s); it must return one "
                          "row per day x service x project with is_anomaly.")
    out = pd.DataFrame({"day": pd.to_datetime(cells["day"]).dt.tz_localize(None).dt.normalize(),
                        "service": cells["service"].astype(str), "project_id": cells["project_id"].astype(str),
                        "predicted": cells["is_anomaly"].astype(bool)})
    out = out[out.day >= first]
    return out.groupby(CELL, as_index=False, sort=True)["predicted"].any()


def _known_cells(known: pd.DataFrame | None) -> pd.DataFrame:
    if known is None or known.empty:
        return pd.DataFrame({"day": pd.Series(dtype="datetime64[ns]"), "service": pd.Series(dtype=str),
                             "project_id": pd.Series(dtype=str), "known": pd.Series(dtype=bool)})
    day = known["day"] if "day" in known.columns else known["date"]
    return pd.DataFrame({"day": pd.to_datetime(day).dt.tz_localize(None).dt.normalize(),
                         "service": known["service"].astype(str), "project_id": known["project_id"].astype(str),
                         "known": True}).drop_duplicates(CELL)


def _draw_cells(scored: pd.DataFrame, injection, first: pd.Timestamp, known: pd.DataFrame,
                clean_alarms: pd.DataFrame) -> pd.DataFrame:
    """The holdout's cells with truth (material injected), kind, direction, and don't-care (changed but not
    material, or a known anomaly of the data, or a cell already flagged on the untouched holdout: `clean_alarms`)."""
    truth = injection.cells.assign(day=pd.to_datetime(injection.cells["date"]))
    truth = truth[truth.material & (truth.day >= first)]
    truth = truth.drop_duplicates(CELL)[[*CELL, "anomaly_id", "kind", "direction"]].assign(truth=True)
    changed = injection.cell_delta()
    changed = changed[changed.day >= first][CELL].drop_duplicates().assign(changed=True)
    cells = scored.merge(truth, on=CELL, how="outer").merge(changed, on=CELL, how="left")
    cells = cells.merge(known, on=CELL, how="left").merge(clean_alarms, on=CELL, how="left")
    for c in ("predicted", "truth", "changed", "known", "clean_alarm"):
        cells[c] = cells[c].astype("boolean").fillna(False).astype(bool)
    cells["dont_care"] = ((cells["changed"] | cells["known"]) & ~cells["truth"]) | cells["clean_alarm"]
    return cells.drop(columns=["changed", "known"]).sort_values(CELL).reset_index(drop=True)


def _draw_metrics(cells: pd.DataFrame) -> dict:
    judged = cells[~cells.dont_care]
    pessimistic = cells[~cells.dont_care | (cells.clean_alarm & ~cells.truth)]  # clean alarms counted false
    precision, recall, f1 = precision_recall_f1(judged.truth, judged.predicted)
    events = event_metrics(cells.assign(predicted=cells.predicted & ~cells.dont_care)[[*CELL, "truth", "predicted"]])
    nan = float("nan")
    has_truth = bool(judged.truth.any())
    return {"f1": f1 if has_truth else nan, "precision": precision if judged.predicted.any() else nan,
            "recall": recall if has_truth else nan, "event_f1": events["event_f1"] if has_truth else nan,
            "event_precision": events["event_precision"], "event_recall": events["event_recall"] if has_truth else nan,
            "mean_detection_delay_days": events["mean_detection_delay_days"],
            "precision_counting_clean_alarms": (precision_recall_f1(pessimistic.truth, pessimistic.predicted)[0]
                                                if pessimistic.predicted.any() else nan),
            "positive_cells": int(judged.truth.sum()), "flagged_cells": int(judged.predicted.sum()),
            "dont_care_cells": int(cells.dont_care.sum()), "cells": int(len(judged))}


def _ratio(hits: int, total: int) -> float:
    return float(hits / total) if total else float("nan")


def evaluate_by_injection(detector, train_daily: pd.DataFrame, holdout_daily: pd.DataFrame,
                          resources: pd.DataFrame | None = None, draws: int = 5, seed: int = 0,
                          spec: InjectionSpec | None = None, cells_share: float = 0.2,
                          known: pd.DataFrame | None = None, max_clean_alarm_rate: float = 0.05) -> dict:
    """Score a fitted detector (`.score(daily, resources)` -> one row per cell with is_anomaly) on `draws` copies
    of the holdout with injected anomalies, and on the untouched holdout. `train_daily` and `holdout_daily` are
    daily cost per resource (the resource_daily_cost view) before and from the holdout's first day. Each draw
    injects anomalies into `cells_share` of the holdout's cells (at least one of each kind). `known`: cells
    (date or day, service, project_id) already known to be anomalous (ground truth, feedback): left out of the
    precision side and of the alarm rate, so that finding them is not counted as a false alarm. Cells flagged on
    the untouched holdout are left out of the injected scoring while they are at most `max_clean_alarm_rate` of
    its cells (see the module's docstring)."""
    if holdout_daily is None or holdout_daily.empty:
        raise FinopsError("The holdout window has no cost rows: there is nothing to inject anomalies into.")
    spec = spec or InjectionSpec()
    history = pd.concat([train_daily, holdout_daily], ignore_index=True)
    panel = CostPanel.from_daily(history)
    first = pd.to_datetime(holdout_daily["day"]).dt.tz_localize(None).dt.normalize().min()
    lo = int(panel.days.searchsorted(first))
    known_cells = _known_cells(known)
    clean_cells = _scored_cells(detector, panel.to_daily(), resources, first)
    holdout_cells = int(clean_cells[["service", "project_id"]].drop_duplicates().shape[0])
    untouched = clean_cells.merge(known_cells, on=CELL, how="left")
    untouched = untouched[~untouched["known"].astype("boolean").fillna(False).astype(bool)]
    clean_flagged = int(untouched.predicted.sum())
    alarm_rate_clean = _ratio(clean_flagged, len(untouched))
    credited = bool(alarm_rate_clean <= max_clean_alarm_rate)
    clean_alarms = untouched[untouched.predicted][CELL].assign(clean_alarm=True)
    if not credited:
        clean_alarms = clean_alarms.iloc[:0]
    n_kinds = sum(1 for k in KINDS if spec.kinds.get(k, 0) > 0)
    n = max(n_kinds, int(round(cells_share * holdout_cells)))

    per_draw, pooled = [], []
    for draw in range(draws):
        rng = np.random.default_rng([seed, draw])
        injection = inject(panel, rng, n, spec, (lo, len(panel.days)))
        cells = _draw_cells(_scored_cells(detector, injection.daily(), resources, first), injection, first,
                            known_cells, clean_alarms)
        per_draw.append({"draw": draw, "anomalies": int(len(injection.anomalies)), **_draw_metrics(cells)})
        pooled.append(cells.assign(draw=draw))
    if not any(d["anomalies"] for d in per_draw):
        raise InsufficientData(f"No anomaly could be injected into the holdout from {first.date()}: its resources "
                               f"need {spec.min_history_days} days of billing history before it.")
    cells = pd.concat(pooled, ignore_index=True)
    positives = cells[cells.truth]

    def mean(key: str) -> float:
        values = np.array([d[key] for d in per_draw], float)
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

    def spread(key: str) -> dict:
        values = np.array([d[key] for d in per_draw], float)
        values = values[np.isfinite(values)]
        if not len(values):
            return {"std": float("nan"), "min": float("nan"), "max": float("nan")}
        return {"std": float(values.std()), "min": float(values.min()), "max": float(values.max())}

    recall_per_kind, cells_per_kind, event_recall_per_kind, anomalies_per_kind = {}, {}, {}, {}
    for kind in KINDS:
        mine = positives[positives.kind == kind]
        cells_per_kind[kind] = int(len(mine))
        recall_per_kind[kind] = _ratio(int(mine.predicted.sum()), len(mine))
        found = mine.groupby(["draw", "anomaly_id"]).predicted.any()
        anomalies_per_kind[kind] = int(len(found))
        event_recall_per_kind[kind] = _ratio(int(found.sum()), len(found))
    recall_per_direction = {}
    for direction in sorted(set(DIRECTION.values())):
        mine = positives[positives.direction == direction]
        recall_per_direction[direction] = _ratio(int(mine.predicted.sum()), len(mine))
    return {
        "evidence": "injected", "draws": draws, "seed": seed, "anomalies_per_draw": mean("anomalies"),
        **{k: mean(k) for k in ("f1", "precision", "recall", "event_f1", "event_precision", "event_recall",
                                "mean_detection_delay_days", "precision_counting_clean_alarms")},
        "spread": {k: spread(k) for k in SPREAD_METRICS},
        "recall_per_kind": recall_per_kind, "event_recall_per_kind": event_recall_per_kind,
        "cells_per_kind": cells_per_kind, "anomalies_per_kind": anomalies_per_kind,
        "recall_per_direction": recall_per_direction,
        "positive_cells": int(len(positives)),
        "alarm_rate_clean": alarm_rate_clean, "clean_cells": int(len(untouched)), "clean_flagged": clean_flagged,
        "clean_alarms_left_out": credited, "max_clean_alarm_rate": max_clean_alarm_rate,
        "known_cells_left_out": int(len(known_cells)),
        "holdout_start": str(first.date()), "per_draw": per_draw,
    }

"""Model monitoring: each run's features and scores against the champion's training reference.

At training, each model writes `reference.json` into its model directory (so the registry keeps it with the version):
the distribution of its input features over the last `REFERENCE_DAYS` days of its training data, as quantile bins,
and the scores it had there (the anomaly detector's alarm rate, the forecast's interval coverage in backtest).

Each run then loads the champion's reference and compares:
  - drift per feature: the Population Stability Index, PSI = sum_b (c_b - r_b) * ln(c_b / r_b), over the
    reference's bins: the deciles of the reference values (inner edges at its 10%, ..., 90% quantiles, duplicates
    merged, the outer bins open-ended), r_b / c_b the reference / current share of values in bin b, a share of 0
    counted as PSI_EPSILON (the deciles are values of the data, so a discrete feature gets a bin per value).
    Rule of thumb: < 0.1 stable, 0.1-0.2 moderate, > 0.2 a real shift.
  - the anomaly detector's alarm rate: the champion detector scoring this run's latest window, against its rate on
    its own training window (a ratio of Laplace-smoothed rates, (flagged + 1) / (cells + 1)).
  - the forecast's recent error against its interval: the champion's monthly series forecasts (its forecast.csv)
    for the months this run's data has closed, their interval coverage and accuracy, against the coverage the
    champion had in backtest (series x month).
No champion yet (or a champion registered before references existed): "no reference", never a failure.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from finops_ml.fileio import read_json, strict, write_json
from finops_ml.models.catalogue import ANOMALY, FORECAST, LABELER, by_name

REFERENCE = "reference.json"
REFERENCE_VERSION = 1
REFERENCE_DAYS = 91  # 13 whole weeks: the same weekday mix in the reference and the current window
BINS = 10  # deciles of the reference
PSI_EPSILON = 1e-4  # the share counted for an empty bin (PSI is infinite otherwise)
STATISTIC = "PSI"
BINS_TEXT = (f"{BINS} quantile bins of the reference (inner edges at its deciles, values of its data, duplicates "
             f"merged, outer bins open-ended); an empty bin counts as a share of {PSI_EPSILON:g}")
EPS_COST = 0.01  # dollars added before a log ratio of costs (a resource without cost that day)


# --- features: what each model reads, per row, from the feature views -------------------------------------------

def _window(frame: pd.DataFrame, days: int, day_column: str = "day") -> pd.DataFrame:
    if frame.empty:
        return frame
    end = pd.to_datetime(frame[day_column]).max()
    return frame[pd.to_datetime(frame[day_column]) > end - pd.Timedelta(days=days)]


def forecast_features(views: dict[str, pd.DataFrame], days: int = REFERENCE_DAYS) -> pd.DataFrame:
    """Per series (service x project) and day of the window, from `daily_cost`: log1p of the daily cost, its log
    change over a week (the weekly pattern and noise), and the log growth of its trailing 28 days over the 28 before
    (the monthly trend the forecast extrapolates)."""
    daily = views["daily_cost"].assign(day=lambda d: pd.to_datetime(d["day"]))
    panel = daily.pivot_table(index="day", columns=["service", "project_id"], values="net_cost", aggfunc="sum")
    panel = panel.reindex(pd.date_range(panel.index.min(), panel.index.max(), freq="D")).fillna(0.0).clip(lower=0)
    weekly = np.log((panel + EPS_COST) / (panel.shift(7) + EPS_COST))
    m28 = panel.rolling(28, min_periods=28).mean()
    growth = np.log((m28 + EPS_COST) / (m28.shift(28) + EPS_COST))
    out = pd.DataFrame({"day": np.repeat(panel.index.to_numpy(), panel.shape[1]),
                        "log_daily_cost": np.log1p(panel.to_numpy()).ravel(),
                        "weekly_log_change": weekly.to_numpy().ravel(),
                        "monthly_log_growth": growth.to_numpy().ravel()})
    return _window(out, days).drop(columns="day")


def anomaly_features(views: dict[str, pd.DataFrame], days: int = REFERENCE_DAYS) -> pd.DataFrame:
    """Per resource and day of the window, from `resource_daily_cost`: log1p of its daily cost, the log ratio of that
    cost to its own trailing 28-day median (what the detector judges: a day against the resource's past), and its
    share of its cell's cost (day x service x project)."""
    daily = views["resource_daily_cost"].assign(day=lambda d: pd.to_datetime(d["day"]))
    res = daily.groupby(["service", "project_id", "resource_name", "day"], as_index=False).net_cost.sum()
    res = res.sort_values(["service", "project_id", "resource_name", "day"])
    past = res.groupby(["service", "project_id", "resource_name"]).net_cost.transform(
        lambda s: s.shift(1).rolling(28, min_periods=7).median())
    cell = res.groupby(["service", "project_id", "day"]).net_cost.transform("sum")
    out = pd.DataFrame({"day": res["day"], "log_resource_cost": np.log1p(res.net_cost.clip(lower=0)),
                        "log_ratio_to_28d_median": np.log((res.net_cost.clip(lower=0) + EPS_COST)
                                                          / (past.clip(lower=0) + EPS_COST)),
                        "share_of_cell": np.where(cell > 0, res.net_cost / cell.where(cell > 0), np.nan)})
    return _window(out, days).drop(columns="day")


def labeler_features(views: dict[str, pd.DataFrame], days: int = REFERENCE_DAYS) -> pd.DataFrame:
    """Per resource active in the window (billed on one of its days), from `resources`: log1p of its cost per day
    of life, whether it started in the window (new resources), its SKU count, the length of its name and the labels
    it carries (0-3 of owner, cost_center, plant). Nothing that grows with the history's length (its total cost,
    its age) is a feature: it would drift in every run."""
    r = views["resources"]
    if r.empty or not {"first_day", "last_day"} <= set(r.columns):  # the `resources` view always has them
        return pd.DataFrame(columns=["labels_carried"])
    first, last = pd.to_datetime(r["first_day"]), pd.to_datetime(r["last_day"])
    start = last.max() - pd.Timedelta(days=days)
    active = last > start
    r, first, last = r[active], first[active], last[active]
    out = {"new_in_window": (first > start).astype(float)}
    if "net_cost" in r:
        out["log_cost_per_day"] = np.log1p(r["net_cost"].clip(lower=0) / ((last - first).dt.days + 1))
    if "skus" in r:
        out["skus"] = r["skus"].fillna("").map(lambda s: len([x for x in s.split(" | ") if x]))
    if "resource_name" in r:
        out["name_length"] = r["resource_name"].fillna("").str.len()
    out["labels_carried"] = r[[c for c in ("owner", "cost_center", "plant") if c in r.columns]].notna().sum(axis=1)
    return pd.DataFrame(out).reset_index(drop=True)


FEATURES: dict[str, Callable[[dict[str, pd.DataFrame], int], pd.DataFrame]] = {
    FORECAST: forecast_features, ANOMALY: anomaly_features, LABELER: labeler_features}
VIEWS = {FORECAST: ("daily_cost",), ANOMALY: ("resource_daily_cost",), LABELER: ("resources",)}


# --- PSI -----------------------------------------------------------------------------------------------------------

def bin_edges(values: np.ndarray, bins: int = BINS) -> list[float]:
    """The inner edges of the reference's quantile bins (duplicates merged: a discrete feature has fewer bins)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if not len(v):
        return []
    return sorted({float(q) for q in np.quantile(v, np.arange(1, bins) / bins, method="inverted_cdf")})


def proportions(values: np.ndarray, edges: list[float]) -> list[float]:
    """Shares of the finite values in the bins (-inf, e1], (e1, e2], ..., (ek, inf)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    counts = np.bincount(np.searchsorted(np.asarray(edges, float), v, side="left"), minlength=len(edges) + 1)
    return (counts / max(len(v), 1)).tolist()


def psi(reference: list[float], current: list[float], epsilon: float = PSI_EPSILON) -> float:
    """Population Stability Index of two binned distributions (shares over the same bins)."""
    r = np.maximum(np.asarray(reference, float), epsilon)
    c = np.maximum(np.asarray(current, float), epsilon)
    return float(np.sum((c - r) * np.log(c / r)))


def feature_reference(frame: pd.DataFrame) -> dict:
    out = {}
    for column in frame.columns:
        v = pd.to_numeric(frame[column], errors="coerce").to_numpy(float)
        edges = bin_edges(v)
        finite = v[np.isfinite(v)]
        out[column] = {"edges": edges, "proportions": proportions(v, edges), "count": int(len(finite)),
                       "mean": float(finite.mean()) if len(finite) else None}
    return out


# --- the reference, written at training --------------------------------------------------------------------------

def _alarm_window(cells: pd.DataFrame, days: int) -> dict:
    w = _window(cells, days)
    return {"flagged": int(w["is_anomaly"].sum()), "cells": int(len(w))}


def build_reference(kind: str, views: dict[str, pd.DataFrame], metrics: dict | None = None,
                    scored_cells: pd.DataFrame | None = None) -> dict:
    """The reference of a model trained on `views` (its feature views): bins of each feature over the last
    REFERENCE_DAYS days, and its scores there (`scored_cells`: the registered detector's cells; `metrics`: the
    forecast's evaluation metrics)."""
    frame = FEATURES[kind](views, REFERENCE_DAYS)
    days = [pd.to_datetime(v[c]) for v in views.values() for c in ("day", "last_day") if c in v and len(v)]
    end = max(d.max() for d in days) if days else None
    scores: dict = {}
    if kind == ANOMALY and scored_cells is not None:
        scores["alarm"] = _alarm_window(scored_cells, REFERENCE_DAYS)
    if kind == FORECAST and metrics:
        scores["interval_coverage_series"] = _finite(metrics.get("interval_coverage_series"))
    return strict({"version": REFERENCE_VERSION, "model": kind, "kind": by_name(kind).kind, "statistic": STATISTIC,
            "bins": BINS_TEXT, "window_days": REFERENCE_DAYS,
            "window_end": str(end.date()) if end is not None else None,
            "features": feature_reference(frame), "scores": scores})


def write_reference(model_dir: str | Path, reference: dict) -> Path:
    path = Path(model_dir) / REFERENCE
    write_json(path, reference)
    return path


# --- the comparison, each run ------------------------------------------------------------------------------------

def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _status(value: float | None, threshold: float, higher_is_worse: bool = True) -> str:
    if value is None:
        return "n/a"
    worse = value >= threshold if higher_is_worse else value <= threshold
    if worse:
        return "drift"
    if higher_is_worse and value >= threshold / 2:
        return "watch"
    return "stable"


def feature_drift(reference: dict, frame: pd.DataFrame, threshold: float, min_values: int = 1) -> list[dict]:
    """PSI of each reference feature, this run's values binned with the reference's edges; status "too few" (never
    drift) when the reference or this run has fewer than `min_values` values of it."""
    rows = []
    for name, ref in reference["features"].items():
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(float) if name in frame else np.array([])
        count = int(np.isfinite(values).sum())
        value = psi(ref["proportions"], proportions(values, ref["edges"])) if count and ref["count"] else None
        finite = values[np.isfinite(values)]
        status = "too few" if value is not None and min(count, ref["count"]) < min_values else _status(value, threshold)
        rows.append({"feature": name, "psi": None if value is None else round(value, 6), "threshold": threshold,
                     "status": status, "reference_count": ref["count"], "current_count": count,
                     "reference_mean": ref.get("mean"), "current_mean": float(finite.mean()) if count else None})
    return rows


def alarm_rate_check(reference: dict, champion_dir: Path, views: dict[str, pd.DataFrame], ratio_threshold: float,
                     resources: pd.DataFrame | None = None) -> dict | None:
    """The champion detector on this run's latest window against its alarm rate on its own training window."""
    ref = reference.get("scores", {}).get("alarm")
    model_path = Path(champion_dir) / "model.joblib"
    if not ref or not model_path.exists():
        return None
    import joblib

    detector = joblib.load(model_path)
    cells = detector.score(views["resource_daily_cost"], resources)
    cur = _alarm_window(cells, reference.get("window_days", REFERENCE_DAYS))
    ref_rate = (ref["flagged"] + 1) / (ref["cells"] + 1)
    cur_rate = (cur["flagged"] + 1) / (cur["cells"] + 1)
    ratio = cur_rate / ref_rate
    return {"reference_alarm_rate": ref["flagged"] / max(ref["cells"], 1), "reference_flagged": ref["flagged"],
            "reference_cells": ref["cells"], "current_alarm_rate": cur["flagged"] / max(cur["cells"], 1),
            "current_flagged": cur["flagged"], "current_cells": cur["cells"], "alarm_rate_ratio": round(ratio, 6),
            "threshold": ratio_threshold, "status": "drift" if ratio >= ratio_threshold else "stable"}


def forecast_error_check(reference: dict, champion_dir: Path, views: dict[str, pd.DataFrame],
                         coverage_drop: float) -> dict | None:
    """The champion's monthly series forecasts for the months this run's data has closed: coverage of their
    intervals and accuracy (1 - WAPE), against the champion's backtest coverage minus `coverage_drop`."""
    path = Path(champion_dir) / "forecast.csv"
    if not path.exists():
        return None
    fc = pd.read_csv(path)
    daily = views["daily_cost"].assign(day=lambda d: pd.to_datetime(d["day"]))
    last = daily.day.max()
    closed = last.to_period("M") if (last + pd.Timedelta(days=1)).day == 1 else last.to_period("M") - 1
    actual = daily.assign(month=daily.day.dt.to_period("M")).groupby(
        ["service", "project_id", "month"], as_index=False).net_cost.sum()
    actual["month"] = actual["month"].astype(str)
    fc = fc[pd.PeriodIndex(fc["month"], freq="M") <= closed]
    ref_cov = reference.get("scores", {}).get("interval_coverage_series")
    out = {"reference_coverage": ref_cov, "coverage_drop": coverage_drop, "months": sorted(fc["month"].unique()),
           "series_months": 0, "coverage": None, "accuracy": None, "status": "n/a"}
    if fc.empty:
        out["reason"] = "no month of the champion's forecast has closed in this run's data"
        return out
    joined = fc.merge(actual, on=["service", "project_id", "month"], how="left").fillna({"net_cost": 0.0})
    coverage = float(((joined.net_cost >= joined.lo) & (joined.net_cost <= joined.hi)).mean())
    denom = float(joined.net_cost.abs().sum())
    accuracy = 1.0 - float((joined.net_cost - joined.forecast).abs().sum()) / denom if denom > 0 else None
    out.update(series_months=int(len(joined)), coverage=round(coverage, 6),
               accuracy=None if accuracy is None else round(accuracy, 6))
    if ref_cov is not None:
        out["threshold"] = round(ref_cov - coverage_drop, 6)
        out["status"] = "drift" if coverage < ref_cov - coverage_drop else "stable"
    return out


def compare(kind: str, reference: dict | None, champion_dir: Path | None, views: dict[str, pd.DataFrame],
            cfg, champion_version: int | None = None, reason: str | None = None) -> dict:
    """One model's (`kind`: its registry name) monitoring: {"status": "no reference" | "stable" | "drift",
    features, scores}."""
    name = kind
    if reference is None:
        return {"model": name, "status": "no reference", "reason": reason or "no champion yet",
                "champion_version": champion_version, "features": [], "scores": {}}
    frame = FEATURES[kind](views, reference.get("window_days", REFERENCE_DAYS))
    features = feature_drift(reference, frame, cfg.psi_threshold, cfg.min_values)
    scores = {}
    if kind == ANOMALY:
        scores["alarm_rate"] = alarm_rate_check(reference, champion_dir, views, cfg.alarm_rate_ratio)
    if kind == FORECAST:
        scores["interval_error"] = forecast_error_check(reference, champion_dir, views, cfg.coverage_drop)
    scores = {k: v for k, v in scores.items() if v is not None}
    drifted = [f["feature"] for f in features if f["status"] == "drift"]
    drifted += [k for k, v in scores.items() if v.get("status") == "drift"]
    return {"model": name, "status": "drift" if drifted else "stable", "champion_version": champion_version,
            "reference_window_end": reference.get("window_end"), "window_days": reference.get("window_days"),
            "drifted": drifted, "features": features, "scores": scores}


def champion_reference(registry, name: str, into: Path) -> tuple[dict | None, Path | None, int | None, str]:
    """(reference, champion's model directory, its version, why there is none) from a registry."""
    try:
        aliases = registry.aliases(name)
    except Exception as exc:  # noqa: BLE001 - a registry that cannot be read: monitoring says so, the run goes on
        return None, None, None, f"the registry could not be read ({exc.__class__.__name__}: {exc})"
    if "champion" not in aliases:
        return None, None, None, "no champion yet"
    version = int(aliases["champion"])
    try:
        from finops_ml.platform.registry import LocalRegistry

        d = (registry.model_dir(name, "champion") if isinstance(registry, LocalRegistry)
             else registry.model_dir(name, "champion", into / name))
    except Exception as exc:  # noqa: BLE001
        return None, None, version, f"the champion v{version} could not be read ({exc.__class__.__name__}: {exc})"
    path = Path(d) / REFERENCE
    if not path.exists():
        return None, Path(d), version, f"the champion v{version} was registered without a {REFERENCE}"
    return read_json(path), Path(d), version, ""


def monitor(views: dict[str, pd.DataFrame], registry, cfg, kinds=(FORECAST, ANOMALY, LABELER)) -> dict:
    """The run's `monitoring` section: every model against its champion's reference (`cfg`: MonitoringConfig)."""
    models = {}
    with tempfile.TemporaryDirectory(prefix="finops-monitor-") as tmp:
        for kind in kinds:
            name = kind
            reference, champion_dir, version, reason = champion_reference(registry, name, Path(tmp))
            if any(views.get(v) is None for v in VIEWS[kind]):
                reference, reason = None, "this run has no data for it"
            models[kind] = compare(kind, reference, champion_dir, views, cfg, version, reason)
    drifted = [{"model": m["model"], "check": d} for kind, m in models.items()
               for d in m.get("drifted", [])]
    return strict({"statistic": STATISTIC, "bins": BINS_TEXT, "window_days": REFERENCE_DAYS,
            "thresholds": {"psi": cfg.psi_threshold, "min_values": cfg.min_values,
                           "alarm_rate_ratio": cfg.alarm_rate_ratio, "coverage_drop": cfg.coverage_drop},
            "models": models, "drifted": drifted, "drift": bool(drifted)})


def kfp_metrics(section: dict) -> dict[str, float]:
    """drift_* numbers for KFP Metrics: PSI per feature, alarm-rate ratio, coverage, and the count of drifts."""
    out = {"drift_checks_failed": float(len(section.get("drifted", [])))}
    for name, m in section.get("models", {}).items():
        kind = by_name(name).kind
        for f in m.get("features", []):
            if f["psi"] is not None:
                out[f"drift_{kind}_{f['feature']}_psi"] = float(f["psi"])
        alarm = m.get("scores", {}).get("alarm_rate")
        if alarm:
            out[f"drift_{kind}_alarm_rate_ratio"] = float(alarm["alarm_rate_ratio"])
        err = m.get("scores", {}).get("interval_error")
        if err and err.get("coverage") is not None:
            out[f"drift_{kind}_recent_interval_coverage"] = float(err["coverage"])
            if err.get("accuracy") is not None:
                out[f"drift_{kind}_recent_accuracy"] = float(err["accuracy"])
    return {k: v for k, v in out.items() if math.isfinite(v)}


# --- alerts -------------------------------------------------------------------------------------------------------

def drift_alerts(section: dict, run_id: str) -> list[dict]:
    """One alert per drifted check of the run (its key: drift/RUN/MODEL/CHECK, so a retried step sends none twice)."""
    alerts = []
    for kind, m in section.get("models", {}).items():
        rows = {f["feature"]: f for f in m.get("features", [])}
        for check in m.get("drifted", []):
            if check in rows:
                f = rows[check]
                detail = (f"PSI {f['psi']:.3f} >= threshold {f['threshold']:.2f} over the last "
                          f"{m.get('window_days')} days (mean {_num(f['reference_mean'])} -> "
                          f"{_num(f['current_mean'])})")
            elif check == "alarm_rate":
                a = m["scores"][check]
                detail = (f"alarm rate {a['current_alarm_rate']:.2%} against {a['reference_alarm_rate']:.2%} in "
                          f"training (ratio {a['alarm_rate_ratio']:.2f} >= {a['threshold']:.2f})")
            else:
                e = m["scores"][check]
                detail = (f"interval coverage {e['coverage']:.0%} on {', '.join(e['months'])} against "
                          f"{e['reference_coverage']:.0%} in backtest (below {e['threshold']:.0%})")
            title = f"Model drift: {m['model']} {check}: {detail.split(' (')[0]}"
            alerts.append({"kind": "model_drift", "anomaly_id": f"drift/{run_id}/{m['model']}/{check}",
                           "model": m["model"], "check": check, "run_id": run_id, "title": title,
                           "text": "\n".join([title, f"model {m['model']} (champion v{m.get('champion_version')}), "
                                              f"check {check}: {detail}", f"run {run_id}",
                                              "see the run's dashboard, section Model monitoring"])})
    return alerts


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def send_drift_alerts(section: dict, run_id: str, stream_cfg, outbox_path: str | Path,
                      environ: dict[str, str] | None = None, timeout_s: float | None = None) -> dict:
    """Send the run's drift alerts through the stream's channels (Slack, email; none configured: none sent), each
    once (the outbox journal remembers what was accepted and delivered)."""
    from finops_ml.stream.alerts import AlertDispatcher, Outbox, RetryPolicy, senders_from_config

    alerts = drift_alerts(section, run_id)
    senders = senders_from_config(stream_cfg, environ)
    if not alerts or not senders:
        return {"alerts": len(alerts), "channels": sorted(senders), "submitted": 0, "pending": {}}
    dispatcher = AlertDispatcher(Outbox(outbox_path), senders,
                                 RetryPolicy(stream_cfg.retry_attempts, stream_cfg.retry_backoff_s,
                                             stream_cfg.retry_backoff_max_s)).start()
    submitted = sum(dispatcher.submit(a) for a in alerts)
    pending = dispatcher.close(stream_cfg.drain_timeout_s if timeout_s is None else timeout_s)
    return {"alerts": len(alerts), "channels": sorted(senders), "submitted": submitted, "pending": pending,
            "delivered": dict(dispatcher.delivered)}

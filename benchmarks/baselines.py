"""What a FinOps team could use instead of our models: the baselines of benchmarks/model_quality.py.

Each baseline is judged on the same holdout and with the same metric functions (finops_ml.models.metrics) as our models.

Forecast (service-level daily series, 7-day season, forecast over the holdout days, summed per (service, month)):
  seasonal naive, AutoETS, AutoARIMA (statsforecast: the open counterpart of BigQuery ML ARIMA_PLUS).
  Their 80% monthly interval is the sum of the daily 80% bounds statsforecast gives.
Anomaly (daily cells day x service x project, each cell series on a full day grid, missing days as 0):
  rolling z-score |z| > 3 (trailing 28 days), the rule "value > 1.25 x trailing mean and > mean + 2 std"
  (trailing 28 days), STL-residual robust z-score |z| > 3 (statsmodels STL, weekly period, 5-week seasonal and
  4-week trend smoothers, robust, over the whole series as series_decompose_anomalies does), plain Isolation Forest
  on the cell series (its threshold chosen on the training months' labels, as our detector's).
Labels: the nearest-name rule (the label of the most similar labelled resource name by cosine similarity of
  character n-grams; confidence: that similarity); the same-project majority label and the overall majority label
  come with the library's evaluation (finops_ml.models.labeler.BASELINES), on the same folds.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest
from sklearn.feature_extraction.text import TfidfVectorizer

from finops_ml.models.anomaly import best_threshold
from finops_ml.models.labeler import LabelApplier

SEASON = 7
WINDOW = 28

# ---------------------------------------------------------------------------------------------------- forecast


def service_daily(daily: pd.DataFrame) -> pd.DataFrame:
    """Daily net cost per service on a full day grid (unique_id, ds, y): statsforecast's long format."""
    d = daily.assign(day=pd.to_datetime(daily["day"]))
    wide = d.pivot_table(index="day", columns="service", values="net_cost", aggfunc="sum")
    wide = wide.reindex(pd.date_range(wide.index.min(), wide.index.max(), freq="D")).fillna(0.0)
    long = wide.rename_axis("ds").reset_index().melt(id_vars="ds", var_name="unique_id", value_name="y")
    return long[["unique_id", "ds", "y"]]


def forecast_baselines(daily: pd.DataFrame, train_end: pd.Timestamp, interval: float = 0.8,
                       models: tuple[str, ...] = ("seasonal_naive", "auto_ets", "auto_arima"),
                       end: pd.Timestamp | None = None) -> dict:
    """Fit each baseline on the service series up to `train_end`, forecast to `end` (default: the data's end).

    Returns {name: (DataFrame service, month, forecast, lo, hi; seconds)}.
    """
    os.environ.setdefault("NIXTLA_ID_AS_COL", "1")
    import time

    from statsforecast import StatsForecast
    from statsforecast.models import AutoARIMA, AutoETS, SeasonalNaive

    series = service_daily(daily)
    train = series[series.ds <= train_end]
    horizon = int(((series.ds.max() if end is None else end) - train_end).days)
    level = int(round(interval * 100))
    makers = {"seasonal_naive": lambda: SeasonalNaive(season_length=SEASON, alias="seasonal_naive"),
              "auto_ets": lambda: AutoETS(season_length=SEASON, alias="auto_ets"),
              "auto_arima": lambda: AutoARIMA(season_length=SEASON, alias="auto_arima")}
    out = {}
    for name in models:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fc = StatsForecast(models=[makers[name]()], freq="D", n_jobs=1).forecast(
                df=train, h=horizon, level=[level])
        fc = fc.rename(columns={"unique_id": "service", name: "forecast", f"{name}-lo-{level}": "lo",
                                f"{name}-hi-{level}": "hi"})
        fc["month"] = pd.to_datetime(fc["ds"]).dt.strftime("%Y-%m")
        # Costs are not negative: a bound below zero says zero.
        monthly = fc.assign(forecast=fc.forecast.clip(lower=0), lo=fc.lo.clip(lower=0), hi=fc.hi.clip(lower=0)
                            ).groupby(["service", "month"], as_index=False)[["forecast", "lo", "hi"]].sum()
        out[name] = (monthly, time.perf_counter() - t0)
    return out


# ----------------------------------------------------------------------------------------------------- anomaly


def cell_grid(cells: pd.DataFrame) -> tuple[pd.DataFrame, pd.DatetimeIndex, np.ndarray]:
    """Cell series as a matrix (cells x days) on a full day grid, missing days as 0; keys service, project_id."""
    d = cells.assign(day=pd.to_datetime(cells["day"]))
    wide = d.pivot_table(index=["service", "project_id"], columns="day", values="net_cost", aggfunc="sum")
    days = pd.date_range(wide.columns.min(), wide.columns.max(), freq="D")
    wide = wide.reindex(columns=days).fillna(0.0)
    return wide.index.to_frame(index=False), days, wide.to_numpy()


def _trailing(values: np.ndarray, window: int = WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the previous `window` days (today excluded), per series."""
    x = pd.DataFrame(values.T)
    prev = x.shift(1).rolling(window, min_periods=window // 2)
    return prev.mean().to_numpy().T, prev.std().to_numpy().T


def rolling_zscores(values: np.ndarray) -> np.ndarray:
    """|z| of each day against the trailing window's mean and standard deviation."""
    mean, std = _trailing(values)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (values - mean) / std
    return np.nan_to_num(np.abs(z), nan=0.0, posinf=0.0)


def rolling_zscore_flags(values: np.ndarray, threshold: float = 3.0) -> np.ndarray:
    return rolling_zscores(values) > threshold


def rule_flags(values: np.ndarray) -> np.ndarray:
    """value > 1.25 x trailing mean and value > trailing mean + 2 std."""
    mean, std = _trailing(values)
    return np.nan_to_num((values > 1.25 * mean) & (values > mean + 2.0 * std), nan=False).astype(bool)


def stl_scores(values: np.ndarray) -> np.ndarray:
    """Robust z-score of the STL residual over each whole series.

    Weekly period, robust fit, a seasonal smoother of 5 weeks and a trend of 4 weeks: close to the fixed seasonal
    pattern and moving-average trend of series_decompose_anomalies (STL's defaults follow the noise so closely that
    a third of the flags of a clean series are false)."""
    from statsmodels.tsa.seasonal import STL

    scores = np.zeros(values.shape)
    for i, y in enumerate(values):
        if np.count_nonzero(y) < 4 * SEASON:
            continue
        resid = STL(y, period=SEASON, seasonal=35, trend=29, robust=True).fit().resid
        med = np.median(resid)
        mad = 1.4826 * np.median(np.abs(resid - med))
        if mad > 0:
            scores[i] = np.abs(resid - med) / mad
    return scores


def stl_flags(values: np.ndarray, threshold: float = 3.0) -> np.ndarray:
    return stl_scores(values) > threshold


def iforest_scores(values: np.ndarray, days: pd.DatetimeIndex, train_mask: np.ndarray, seed: int) -> np.ndarray:
    """Plain Isolation Forest on each cell's value and its ratios to its trailing week and month.

    Fitted on the training days' cells; higher score = more anomalous.
    """
    mean28, std28 = _trailing(values)
    mean7, _ = _trailing(values, 7)
    log_v = np.log1p(np.maximum(values, 0))
    feats = np.stack([
        log_v,
        log_v - np.log1p(np.nan_to_num(mean7, nan=0.0)),
        log_v - np.log1p(np.nan_to_num(mean28, nan=0.0)),
        np.clip(np.nan_to_num((values - mean28) / (std28 + 1e-9), nan=0.0), -50, 50),
        np.broadcast_to(np.asarray(days.dayofweek, float), values.shape),
    ], axis=-1)
    flat = feats.reshape(-1, feats.shape[-1])
    present = (values > 0).reshape(-1)
    fit_rows = present & np.broadcast_to(train_mask, values.shape).reshape(-1)
    forest = IsolationForest(n_estimators=200, random_state=seed, n_jobs=1).fit(flat[fit_rows])
    scores = np.zeros(len(flat))
    scores[present] = -forest.score_samples(flat[present])
    return scores.reshape(values.shape)


def anomaly_baselines(cells: pd.DataFrame, train_end: pd.Timestamp, seed: int) -> dict[str, np.ndarray]:
    """Predicted flags per baseline, aligned with the rows of `cells` (day, service, project_id, net_cost, truth).

    `truth` is used only on the training days (the thresholds of the `_tuned` baselines and of the Isolation Forest:
    the best F1 there), as our detector uses it on synthetic data.
    """
    import time

    keys, days, values = cell_grid(cells)
    d = pd.to_datetime(cells["day"])
    r_idx = pd.MultiIndex.from_frame(keys).get_indexer(pd.MultiIndex.from_frame(cells[["service", "project_id"]]))
    t_idx = ((d - days[0]) // pd.Timedelta(days=1)).to_numpy()
    train_days = np.asarray(days <= train_end)
    train_rows = (d <= train_end).to_numpy()
    labels = cells["truth"].to_numpy(bool)

    def tuned(scores: np.ndarray) -> np.ndarray:  # the threshold with the best F1 on the training days' truth
        return scores >= best_threshold(scores[train_rows], labels[train_rows])

    out = {}
    t0 = time.perf_counter()
    z = rolling_zscores(values)[r_idx, t_idx]
    out["rolling_zscore"] = (z > 3.0, time.perf_counter() - t0)
    out["rolling_zscore_tuned"] = (tuned(z), time.perf_counter() - t0)
    t0 = time.perf_counter()
    out["rule_1.25x_mean_2std"] = (rule_flags(values)[r_idx, t_idx], time.perf_counter() - t0)
    t0 = time.perf_counter()
    stl = stl_scores(values)[r_idx, t_idx]
    out["stl_robust_z"] = (stl > 3.0, time.perf_counter() - t0)
    out["stl_robust_z_tuned"] = (tuned(stl), time.perf_counter() - t0)
    t0 = time.perf_counter()
    out["isolation_forest"] = (tuned(iforest_scores(values, days, train_days, seed)[r_idx, t_idx]),
                               time.perf_counter() - t0)
    return out


# ------------------------------------------------------------------------------------------------------ labels


def _name_tokens(names: pd.Series) -> pd.Series:
    return names.fillna("").str.lower().str.replace(r"[^a-z0-9]+", " ", regex=True)


@dataclass
class NearestNameLabeler(LabelApplier):
    """Per label, the label of the labelled resource whose name is most similar (cosine of character 2-4-gram
    TF-IDF); confidence: that similarity. Fitted and judged like our labeler (`labeler.evaluate`)."""

    targets: tuple[str, ...] = ("owner", "cost_center", "plant")
    confidence_threshold: float = 0.6
    thresholds_: dict = field(default_factory=dict)
    fitted_: dict = field(default_factory=dict)

    def fit(self, resources: pd.DataFrame) -> "NearestNameLabeler":
        for t in self.targets:
            known = resources[resources[t].notna()]
            vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4)).fit(_name_tokens(known.resource_name))
            self.fitted_[t] = (vectorizer, vectorizer.transform(_name_tokens(known.resource_name)), known[t].to_numpy())
            self.thresholds_[t] = self.confidence_threshold
        return self

    def predict(self, resources: pd.DataFrame) -> pd.DataFrame:
        out = resources[["resource_name", "project_id"]].copy()
        for t, (vectorizer, matrix, labels) in self.fitted_.items():
            sim = (vectorizer.transform(_name_tokens(resources.resource_name)) @ matrix.T).toarray()
            best = sim.argmax(axis=1)
            out[f"{t}_predicted"] = labels[best]
            out[f"{t}_confidence"] = sim[np.arange(len(best)), best]
        return out


# The library's evaluation reports the same-project and overall majority labels (metrics["baselines"]).
LABEL_BASELINES = {"nearest_name": NearestNameLabeler}

"""Cost forecast per service and project, 3 months ahead, with intervals.

A direct multi-horizon model over all (service, project) daily series at once: at a forecast origin, each
series is described by its recent level, growth and seasonal ratios; the model predicts the cost of day
origin+h as a multiple of the recent level. Linear regression, random forest and XGBoost are compared on a
time-based backtest inside the training window; the best one is evaluated on the holdout (the last months)
and then refitted on everything to forecast the next months. Intervals are the empirical quantiles of the
backtest errors at the (service, month) level (split conformal), so they cover what they claim on past data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from xgboost import XGBRegressor

from finops_ml.metrics import forecast_accuracy, mape, mase

FEATURES = ["h", "season_mult", "is_weekend", "is_month_end", "growth", "h_growth", "recent_ratio", "log_level",
            "weekend_ratio", "month_end_ratio", "service_code"]
MIN_HISTORY = 56
ORIGIN_STEP = 7
HORIZON_STEP = 2
RECENCY_HALF_LIFE_DAYS = 90


def make_regressor(name: str, seed: int):
    if name == "linear":
        return make_pipeline(StandardScaler(), Ridge(alpha=1.0))
    if name == "random_forest":
        return RandomForestRegressor(n_estimators=80, min_samples_leaf=10, max_features=0.6, max_samples=0.5,
                                     n_jobs=2, random_state=seed)
    if name == "xgboost":
        return XGBRegressor(n_estimators=300, max_depth=5, learning_rate=0.05, subsample=0.8, colsample_bytree=0.9,
                            n_jobs=2, random_state=seed)
    raise ValueError(f"unknown forecast model {name!r}")


@dataclass
class SeriesPanel:
    """Daily series as a matrix: keys (service, project_id), days, values[n_series, n_days]."""

    keys: pd.DataFrame
    days: pd.DatetimeIndex
    values: np.ndarray

    @classmethod
    def from_daily(cls, daily: pd.DataFrame) -> "SeriesPanel":
        daily = daily.assign(day=pd.to_datetime(daily["day"]))
        wide = daily.pivot_table(index=["service", "project_id"], columns="day", values="net_cost", aggfunc="sum")
        days = pd.date_range(wide.columns.min(), wide.columns.max(), freq="D")
        wide = wide.reindex(columns=days).fillna(0.0)
        return cls(wide.index.to_frame(index=False), days, wide.to_numpy())

    def until(self, t: int) -> "SeriesPanel":
        return SeriesPanel(self.keys, self.days[: t + 1], self.values[:, : t + 1])


def _origin_state(y: np.ndarray, days: pd.DatetimeIndex, t: int) -> dict[str, np.ndarray]:
    """Per-series description at origin t (inclusive), from data up to t only."""
    w = y[:, t - 27: t + 1]
    med = np.median(w, axis=1, keepdims=True)
    w = np.minimum(w, 3 * med + 1.0)  # a spike in the window must not set the level
    level = w.mean(axis=1)
    prev = np.minimum(y[:, t - 55: t - 27], 3 * med + 1.0).mean(axis=1)
    recent = y[:, t - 6: t + 1].mean(axis=1)
    hist = y[:, max(0, t - 90): t + 1]
    hdays = days[max(0, t - 90): t + 1]
    weekend = np.asarray(hdays.dayofweek >= 5)
    month_end = np.asarray(hdays.day > hdays.days_in_month - 2)
    normal = hist[:, ~weekend & ~month_end].mean(axis=1) + 1e-9
    return {
        "level": level,
        "growth": np.log((level + 1.0) / (prev + 1.0)),
        "recent_ratio": (recent + 1.0) / (level + 1.0),
        "weekend_ratio": np.clip(hist[:, weekend].mean(axis=1) / normal, 0.0, 3.0),
        "month_end_ratio": np.clip(hist[:, month_end & ~weekend].mean(axis=1) / normal, 0.0, 5.0)
        if (month_end & ~weekend).any() else np.ones(len(y)),
        "weekday_level": normal,
        "alive": y[:, t - 27] > 0,
    }


def _examples(panel: SeriesPanel, t: int, horizons: np.ndarray, service_codes: np.ndarray,
              with_target: bool) -> tuple[pd.DataFrame, np.ndarray]:
    state = _origin_state(panel.values, panel.days, t)
    keep = state["alive"] & (state["level"] > 0.5)
    s_idx = np.repeat(np.nonzero(keep)[0], len(horizons))
    h = np.tile(horizons, keep.sum())
    target_days = panel.days[t] + pd.to_timedelta(h, unit="D")
    is_weekend = np.asarray(target_days.dayofweek >= 5, dtype=float)
    is_month_end = np.asarray(target_days.day > target_days.days_in_month - 2, dtype=float)
    base_ratio = state["weekday_level"][s_idx] / (state["level"][s_idx] + 1e-9)
    season = base_ratio * np.where(is_weekend > 0, state["weekend_ratio"][s_idx], 1.0) * np.where(
        is_month_end > 0, state["month_end_ratio"][s_idx], 1.0)
    growth = state["growth"][s_idx]
    x = pd.DataFrame({
        "h": h, "season_mult": season, "is_weekend": is_weekend, "is_month_end": is_month_end, "growth": growth,
        "h_growth": h * growth / 28.0, "recent_ratio": state["recent_ratio"][s_idx],
        "log_level": np.log1p(state["level"][s_idx]), "weekend_ratio": state["weekend_ratio"][s_idx],
        "month_end_ratio": state["month_end_ratio"][s_idx], "service_code": service_codes[s_idx],
        "_series": s_idx, "_day": target_days, "_level": state["level"][s_idx],
    })
    y = panel.values[s_idx, t + h] / x["_level"].to_numpy() if with_target else np.empty(0)
    return x, y


@dataclass
class CostForecaster:
    """Fit on a panel up to a cutoff, forecast the following days for every series."""

    model: str = "xgboost"
    seed: int = 42
    horizon_days: int = 92
    regressor_: object = None
    services_: list[str] = field(default_factory=list)

    def _codes(self, panel: SeriesPanel) -> np.ndarray:
        lookup = {s: i for i, s in enumerate(self.services_)}
        return panel.keys["service"].map(lambda s: lookup.get(s, -1)).to_numpy()

    def fit(self, panel: SeriesPanel) -> "CostForecaster":
        self.services_ = sorted(panel.keys["service"].unique())
        codes = self._codes(panel)
        last = panel.values.shape[1] - 1
        horizons = np.arange(1, self.horizon_days + 1, HORIZON_STEP)
        xs, ys = [], []
        for t in range(MIN_HISTORY, last - self.horizon_days + 1, ORIGIN_STEP):
            x, y = _examples(panel, t, horizons, codes, with_target=True)
            x["_age"] = last - self.horizon_days - t
            xs.append(x)
            ys.append(y)
        if not xs:
            raise ValueError("not enough history to fit the forecast (needs 56 days + the horizon)")
        x, y = pd.concat(xs, ignore_index=True), np.concatenate(ys)
        # Log ratio: the model learns the typical (median-like) path, which is what WAPE rewards, and a few
        # new resources arriving after an origin do not drag every forecast up.
        y = np.log(np.clip(y, 0.05, 20.0))
        # Recent origins weigh more: the organisation's growth changes as its migration waves end.
        weight = x["_level"].to_numpy() * 0.5 ** (x["_age"].to_numpy() / RECENCY_HALF_LIFE_DAYS)
        self.regressor_ = make_regressor(self.model, self.seed)
        fit_kw = {"sample_weight": weight}
        if self.model == "linear":
            fit_kw = {"ridge__sample_weight": weight}
        self.regressor_.fit(x[FEATURES], y, **fit_kw)
        return self

    def predict(self, panel: SeriesPanel, days: int | None = None) -> pd.DataFrame:
        """Daily forecast for the `days` after the panel's last day: service, project_id, day, forecast."""
        days = days or self.horizon_days
        t = panel.values.shape[1] - 1
        x, _ = _examples(panel, t, np.arange(1, days + 1), self._codes(panel), with_target=False)
        ratio = np.exp(self.regressor_.predict(x[FEATURES]))
        keys = panel.keys.iloc[x["_series"].to_numpy()].reset_index(drop=True)
        return pd.DataFrame({"service": keys["service"], "project_id": keys["project_id"], "day": x["_day"],
                             "forecast": ratio * x["_level"].to_numpy()})


def monthly(daily: pd.DataFrame, value: str, by=("service",)) -> pd.Series:
    month = pd.to_datetime(daily["day"]).dt.strftime("%Y-%m")
    return daily.groupby([*(daily[b] for b in by), month])[value].sum()


def _full_months_after(days: pd.DatetimeIndex, t: int, n: int) -> int:
    """Index of the last day of the n-th full month after day t (t must be a month end)."""
    end = days[t] + pd.offsets.MonthEnd(n)
    return int(np.searchsorted(days, end))


def _score_window(history: SeriesPanel, panel: SeriesPanel, t: int, n_months: int,
                  forecaster: CostForecaster) -> pd.DataFrame:
    """Forecast from origin t (inputs from `history`) and compare with the actuals of `panel` in the next n full
    months, per (service, month)."""
    end = _full_months_after(panel.days, t, n_months)
    fc = forecaster.predict(history.until(t), days=end - t)
    actual = pd.DataFrame({
        "service": np.repeat(panel.keys["service"].to_numpy(), end - t),
        "project_id": np.repeat(panel.keys["project_id"].to_numpy(), end - t),
        "day": np.tile(panel.days[t + 1: end + 1], len(panel.keys)),
        "actual": panel.values[:, t + 1: end + 1].ravel(),
    })
    both = actual.merge(fc, on=["service", "project_id", "day"], how="left").fillna({"forecast": 0.0})
    return pd.concat([monthly(both, "actual"), monthly(both, "forecast")], axis=1).reset_index().rename(
        columns={"level_1": "month", "day": "month"})


def month_end_index(days: pd.DatetimeIndex, months_before_end: int) -> int:
    """Index of the last day of the month that lies `months_before_end` full months before the data's end."""
    last_full = days[-1] if (days[-1] + pd.Timedelta(days=1)).day == 1 else days[-1] - pd.offsets.MonthEnd(1)
    target = last_full - pd.offsets.MonthEnd(months_before_end) if months_before_end else last_full
    return int(np.searchsorted(days, target))


def adjust_for_anomalies(daily: pd.DataFrame, anomalies: pd.DataFrame | None) -> pd.DataFrame:
    """The cost of cells the anomaly detector flagged, replaced by their expected cost.

    A forecast should extend the normal path: a drift that was caught and fixed must not be extrapolated.
    The detector's flags are causal, so a cell is only ever adjusted with what was known on its day.
    """
    daily = daily.assign(day=pd.to_datetime(daily["day"]))
    if anomalies is None or not anomalies["is_anomaly"].any():
        return daily
    flagged = anomalies.loc[anomalies["is_anomaly"], ["day", "service", "project_id", "expected"]]
    flagged = flagged.assign(day=pd.to_datetime(flagged["day"]))
    out = daily.merge(flagged, on=["day", "service", "project_id"], how="left")
    out["net_cost"] = out["expected"].fillna(out["net_cost"])
    return out.drop(columns="expected")


def train_and_evaluate(daily: pd.DataFrame, candidates: list[str], holdout_months: int, horizon_months: int,
                       backtest_origins: int, interval: float, seed: int,
                       anomalies: pd.DataFrame | None = None) -> dict:
    """Select by backtest, evaluate on the holdout, refit on all data and forecast the next months.

    Models learn from the anomaly-adjusted history (see `adjust_for_anomalies`); they are always scored
    against the actual cost.
    """
    panel = SeriesPanel.from_daily(daily)
    clean = SeriesPanel.from_daily(adjust_for_anomalies(daily, anomalies))
    cutoff = month_end_index(panel.days, holdout_months)
    train = clean.until(cutoff)
    horizon_days = 31 * horizon_months
    backtests = {}
    errors = {}
    for name in candidates:
        frames = []
        for k in range(backtest_origins):
            origin = month_end_index(train.days, horizon_months + k)
            model = CostForecaster(name, seed, horizon_days).fit(train.until(origin))
            scored = _score_window(train, panel, origin, horizon_months, model)
            frames.append(scored.assign(origin=str(train.days[origin].date())))
        scored = pd.concat(frames, ignore_index=True)
        backtests[name] = forecast_accuracy(scored.actual, scored.forecast)
        errors[name] = scored
    best = max(backtests, key=backtests.get)
    ratios = (errors[best].actual / errors[best].forecast.replace(0, np.nan)).dropna()
    alpha = (1.0 - interval) / 2.0
    # The interval always contains the point forecast, even when the backtests erred mostly one way.
    lo_q = min(float(np.quantile(ratios, alpha)), 1.0)
    hi_q = max(float(np.quantile(ratios, 1.0 - alpha)), 1.0)

    # Holdout: fit on the training window only, forecast the holdout months, score once.
    model = CostForecaster(best, seed, horizon_days).fit(train)
    holdout = _score_window(train, panel, cutoff, holdout_months, model)
    covered = (holdout.actual >= holdout.forecast * lo_q) & (holdout.actual <= holdout.forecast * hi_q)
    total_hist = panel.values[:, : cutoff + 1].sum(axis=0)
    total_actual = panel.values[:, cutoff + 1:].sum(axis=0)
    holdout_daily = model.predict(train, days=len(panel.days) - cutoff - 1)
    total_fc = holdout_daily.groupby("day")["forecast"].sum().reindex(panel.days[cutoff + 1:]).fillna(0).to_numpy()
    # Seasonal naive (same service, same month length, last observed month repeated) for comparison.
    last_month = monthly(pd.DataFrame({"service": np.repeat(panel.keys["service"].to_numpy(), 30),
                                       "day": np.tile(panel.days[cutoff - 29: cutoff + 1], len(panel.keys)),
                                       "v": panel.values[:, cutoff - 29: cutoff + 1].ravel()}), "v")
    naive = holdout.service.map(last_month.groupby(level=0).sum())
    metrics = {
        "model": best,
        "backtest_accuracy": backtests,
        "forecast_accuracy": forecast_accuracy(holdout.actual, holdout.forecast),
        "naive_accuracy": forecast_accuracy(holdout.actual, naive),
        "mape": mape(holdout.actual, holdout.forecast),
        "mase": mase(total_actual, total_fc, total_hist),
        "interval": interval,
        "interval_coverage": float(covered.mean()),
        "interval_ratio": [lo_q, hi_q],
        "holdout_start": str(panel.days[cutoff + 1].date()),
        "holdout_end": str(panel.days[-1].date()),
        "train_end": str(panel.days[cutoff].date()),
    }
    # Production model: refit on everything, forecast the next months.
    final = CostForecaster(best, seed, horizon_days).fit(clean)
    # Exactly the next `horizon_months` calendar months (31 * months days would spill into one more month).
    last = panel.days[-1]
    future = final.predict(clean, days=(last + pd.offsets.MonthEnd(horizon_months) - last).days)
    future_monthly = monthly(future, "forecast", by=("service", "project_id")).rename("forecast").reset_index()
    future_monthly = future_monthly.rename(columns={"day": "month"})
    future_monthly["lo"] = future_monthly.forecast * lo_q
    future_monthly["hi"] = future_monthly.forecast * hi_q
    history = pd.DataFrame({"day": panel.days, "actual": panel.values.sum(axis=0)})
    holdout_curve = pd.DataFrame({"day": panel.days[cutoff + 1:], "forecast": total_fc})
    return {"metrics": metrics, "model": final, "holdout": holdout, "forecast": future_monthly,
            "history": history, "holdout_curve": holdout_curve,
            "future_curve": future.groupby("day")["forecast"].sum().reset_index()}

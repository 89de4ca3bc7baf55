"""Cost forecast per service and project, daily and monthly, 3 months ahead, with calibrated intervals.

A direct multi-horizon model over all (service, project) daily series at once: at a forecast origin, each
series is described by its recent level, growth, age and seasonal ratios; the model predicts the cost of day
origin+h as a multiple of the recent level. Linear regression, random forest, XGBoost and the ensemble of the
two best (their mean forecast) are compared on time-based backtests inside the training window, from month-end
origins like the forecast's; the best is evaluated on the holdout (the last months), where every candidate and
the seasonal naive are scored too, and then refitted on everything to forecast the next months.

Intervals are split conformal at the level they are reported at: daily per series and in total, monthly per
series, service, project and in total, from the ratios actual / forecast of the backtest windows (the
production forecast adds the holdout window). The same ratios are the predictive distribution the budget
alerts (`finops_ml.models.budget`) take P(spend > budget) from.
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

from finops_ml.models.metrics import forecast_accuracy, mape

FEATURES = ["h", "season_mult", "is_weekend", "is_month_end", "growth", "h_growth", "recent_ratio", "log_level",
            "weekend_ratio", "month_end_ratio", "service_code", "log_age"]
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
    seen = y[:, : t + 1] > 0
    age = np.where(seen.any(axis=1), t - seen.argmax(axis=1), 0)  # days since the series' first cost
    return {
        "age": age,
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
        "log_age": np.log1p(np.minimum(state["age"][s_idx], 365)),
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

    def predict_matrix(self, panel: SeriesPanel, days: int | None = None) -> np.ndarray:
        """Daily forecast for the `days` after the panel's last day, [n_series, days] (0 for dead series)."""
        days = days or self.horizon_days
        t = panel.values.shape[1] - 1
        x, _ = _examples(panel, t, np.arange(1, days + 1), self._codes(panel), with_target=False)
        out = np.zeros((len(panel.keys), days))
        if len(x):
            ratio = np.exp(self.regressor_.predict(x[FEATURES]))
            out[x["_series"].to_numpy(), np.tile(np.arange(days), len(x) // days)] = ratio * x["_level"].to_numpy()
        return out

    def predict(self, panel: SeriesPanel, days: int | None = None) -> pd.DataFrame:
        """Daily forecast for the `days` after the panel's last day: service, project_id, day, forecast."""
        return _long(panel, self.predict_matrix(panel, days))


@dataclass
class EnsembleForecaster:
    """The mean of several fitted forecasters' daily forecasts."""

    members: list[CostForecaster]

    def predict_matrix(self, panel: SeriesPanel, days: int | None = None) -> np.ndarray:
        return np.mean([m.predict_matrix(panel, days) for m in self.members], axis=0)

    def predict(self, panel: SeriesPanel, days: int | None = None) -> pd.DataFrame:
        return _long(panel, self.predict_matrix(panel, days))


def _long(panel: SeriesPanel, matrix: np.ndarray) -> pd.DataFrame:
    """A [n_series, days] forecast starting the day after the panel's last day, as rows of live series."""
    n, days = matrix.shape
    future = panel.days[-1] + pd.to_timedelta(np.arange(1, days + 1), unit="D")
    live = np.repeat(matrix.any(axis=1), days)
    return pd.DataFrame({"service": np.repeat(panel.keys["service"].to_numpy(), days),
                         "project_id": np.repeat(panel.keys["project_id"].to_numpy(), days),
                         "day": np.tile(future, n), "forecast": matrix.ravel()})[live].reset_index(drop=True)


def monthly(daily: pd.DataFrame, value: str, by=("service",)) -> pd.Series:
    month = pd.to_datetime(daily["day"]).dt.strftime("%Y-%m")
    return daily.groupby([*(daily[b] for b in by), month])[value].sum()


def month_end_index(days: pd.DatetimeIndex, months_before_end: int) -> int:
    """Index of the last day of the month that lies `months_before_end` full months before the data's end."""
    last_full = days[-1] if (days[-1] + pd.Timedelta(days=1)).day == 1 else days[-1] - pd.offsets.MonthEnd(1)
    target = last_full - pd.offsets.MonthEnd(months_before_end) if months_before_end else last_full
    return int(np.searchsorted(days, target))


def _full_months_after(days: pd.DatetimeIndex, t: int, n: int) -> int:
    """Days from day t to the end of the n-th calendar month after it (the month t ends inside counts first)."""
    return int((days[t] + pd.offsets.MonthEnd(n) - days[t]).days)


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


# The levels a forecast is reported and calibrated at: the dimensions kept (the others are summed, shown as ALL).
LEVELS = {"series": ("service", "project_id"), "service": ("service",), "project": ("project_id",), "total": ()}
ALL = "ALL"


def _window(panel: SeriesPanel, origin: int, pred: np.ndarray, actual: SeriesPanel | None) -> pd.DataFrame:
    """Daily rows of a forecast from `origin`: service, project_id, day, month, step (calendar months after the
    origin's month, from 1), forecast and, when `actual` covers the days, actual."""
    n, days = pred.shape
    future = panel.days[origin] + pd.to_timedelta(np.arange(1, days + 1), unit="D")
    origin_month = panel.days[origin].year * 12 + panel.days[origin].month
    step = future.year * 12 + future.month - origin_month + ((panel.days[origin] + pd.Timedelta(days=1)).day != 1)
    out = pd.DataFrame({"service": np.repeat(panel.keys["service"].to_numpy(), days),
                        "project_id": np.repeat(panel.keys["project_id"].to_numpy(), days),
                        "day": np.tile(future, n), "month": np.tile(future.strftime("%Y-%m"), n),
                        "step": np.tile(np.asarray(step), n), "forecast": pred.ravel()})
    if actual is not None:
        out["actual"] = actual.values[:, origin + 1: origin + 1 + days].ravel()
    return out


def by_level(window: pd.DataFrame, values=("forecast", "actual")) -> pd.DataFrame:
    """Monthly sums of a window at every level: level, service, project_id, month, step, values."""
    values = [v for v in values if v in window]
    keys = ["service", "project_id", "month", "step"]
    codes = {k: pd.Categorical(window[k]) for k in keys}  # grouping on codes: fast for long windows
    series = window[values].groupby([codes[k] for k in keys], observed=True).sum()
    series.index.names = keys
    series = series.reset_index()
    frames = []
    for level, dims in LEVELS.items():
        g = series.groupby([*dims, "month", "step"], as_index=False, observed=True)[values].sum()
        for d in ("service", "project_id"):
            if d not in dims:
                g[d] = ALL
        frames.append(g.assign(level=level))
    out = pd.concat(frames, ignore_index=True)[["level", "service", "project_id", "month", "step", *values]]
    return out.astype({"service": str, "project_id": str, "month": str, "step": int})


MIN_RATIO = 0.01  # a series that stopped: its ratio actual / forecast is 0, kept as a large error (log 0.01)


def _log_ratio(actual, forecast) -> np.ndarray:
    actual, forecast = np.asarray(actual, float), np.asarray(forecast, float)
    return np.log(np.maximum(actual, MIN_RATIO * forecast) / forecast)


@dataclass
class Calibration:
    """Split-conformal intervals from backtest errors, per level, as multiples of the point forecast.

    Monthly: the log ratios actual / forecast of all backtest windows at the level, divided by sqrt(step) (a
    forecast further out errs more), so that the few totals of a level pool across steps. Daily (per series):
    the daily log ratios per step. The interval always contains the point forecast.
    """

    interval: float
    monthly: dict[str, np.ndarray]  # level -> normalised log ratios
    daily: dict[str, dict[int, np.ndarray]]  # "series" | "total" -> step -> daily log ratios

    @classmethod
    def from_windows(cls, windows: list[pd.DataFrame], interval: float) -> "Calibration":
        levels = pd.concat([by_level(w) for w in windows], ignore_index=True)
        levels = levels[levels.forecast > 0]
        monthly = {lv: (_log_ratio(g.actual, g.forecast) / np.sqrt(g.step)).to_numpy()
                   for lv, g in levels.groupby("level")}
        days = pd.concat(windows, ignore_index=True)
        totals = pd.concat([w.groupby(["day", "step"], as_index=False)[["forecast", "actual"]].sum() for w in windows])
        daily = {level: {int(s): _log_ratio(g.actual, g.forecast) for s, g in d[d.forecast > 0].groupby("step")}
                 for level, d in (("series", days), ("total", totals))}
        return cls(interval, monthly, daily)

    def _q(self, e: np.ndarray) -> tuple[float, float]:
        if len(e) == 0:
            return 0.0, 0.0
        alpha = (1.0 - self.interval) / 2.0
        return min(float(np.quantile(e, alpha)), 0.0), max(float(np.quantile(e, 1.0 - alpha)), 0.0)

    def monthly_factors(self, level: str, step) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self._q(self.monthly.get(level, np.empty(0)))
        root = np.sqrt(np.asarray(step, float))
        return np.exp(lo * root), np.exp(hi * root)

    def daily_factors(self, step, level: str = "series") -> tuple[np.ndarray, np.ndarray]:
        step = np.asarray(step)
        daily = self.daily.get(level, {})
        known = sorted(daily) or [1]
        q = {s: self._q(daily.get(s, np.empty(0))) for s in known}
        nearest = np.minimum(np.maximum(step, known[0]), known[-1])
        lo = np.array([q.get(int(s), (0.0, 0.0))[0] for s in nearest])
        hi = np.array([q.get(int(s), (0.0, 0.0))[1] for s in nearest])
        return np.exp(lo), np.exp(hi)

    def log_ratios(self, level: str, step: int) -> np.ndarray:
        """The predictive distribution of a month's spend at `level`, `step` months ahead, as log ratios."""
        return self.monthly.get(level, np.empty(0)) * np.sqrt(step)

    def budget_calibration(self, steps) -> dict:
        return {lv: {int(s): {"log_ratios": self.log_ratios(lv, s),
                              "lo_q": float(self.monthly_factors(lv, s)[0]),
                              "hi_q": float(self.monthly_factors(lv, s)[1])} for s in steps}
                for lv in LEVELS}


def with_intervals(monthly_levels: pd.DataFrame, calibration: Calibration) -> pd.DataFrame:
    out = monthly_levels.copy()
    out["lo"], out["hi"] = out.forecast, out.forecast
    for level, idx in out.groupby("level").groups.items():
        lo, hi = calibration.monthly_factors(level, out.loc[idx, "step"])
        out.loc[idx, "lo"] = out.loc[idx, "forecast"] * lo
        out.loc[idx, "hi"] = out.loc[idx, "forecast"] * hi
    return out


def _backtest_accuracy(windows: list[pd.DataFrame]) -> float:
    svc = pd.concat([by_level(w) for w in windows]).query("level == 'service'")
    return forecast_accuracy(svc.actual, svc.forecast)


def seasonal_naive(panel: SeriesPanel, origin: int, days: int, season: int = 7) -> np.ndarray:
    """The last `season` days repeated: [n_series, days]."""
    last = panel.values[:, origin - season + 1: origin + 1]
    return np.tile(last, (1, days // season + 1))[:, :days]


def _scores(level_frame: pd.DataFrame, naive_level: pd.DataFrame | None = None) -> dict:
    """Accuracy, MAPE, interval coverage (and MASE vs the seasonal naive) at the service x month level."""
    svc = level_frame[level_frame.level == "service"]
    out = {"accuracy": forecast_accuracy(svc.actual, svc.forecast), "mape": mape(svc.actual, svc.forecast)}
    if "lo" in level_frame:
        out["interval_coverage"] = float(((svc.actual >= svc.lo) & (svc.actual <= svc.hi)).mean())
    if naive_level is not None:
        naive = naive_level[naive_level.level == "service"].set_index(["service", "month"]).forecast
        naive = naive.reindex(pd.MultiIndex.from_frame(svc[["service", "month"]])).to_numpy()
        denom = np.abs(svc.actual.to_numpy() - naive).sum()
        out["mase"] = float(np.abs(svc.actual - svc.forecast).sum() / denom) if denom > 0 else float("nan")
        out["seasonal_naive_accuracy"] = forecast_accuracy(svc.actual, naive)
    return out


def train_and_evaluate(daily: pd.DataFrame, candidates: list[str], holdout_months: int, horizon_months: int,
                       backtest_origins: int, interval: float, seed: int,
                       anomalies: pd.DataFrame | None = None, budgets: list | None = None) -> dict:
    """Select by backtest, evaluate on the holdout, refit on all data and forecast the next months.

    Candidates are the configured models and, with two or more of them, the ensemble of the two best on the
    backtest (their mean forecast).
    Models learn from the anomaly-adjusted history (see `adjust_for_anomalies`); they are always scored against
    the actual cost. Intervals are calibrated on the backtest windows (origins at month ends, like the forecast
    origin) at the level they are reported at; the production forecast's calibration adds the holdout window,
    the errors of the origin closest to today.
    """
    from finops_ml.models.budget import budget_alerts

    panel = SeriesPanel.from_daily(daily)
    clean = SeriesPanel.from_daily(adjust_for_anomalies(daily, anomalies))
    cutoff = month_end_index(panel.days, holdout_months)
    train = clean.until(cutoff)
    horizon_days = 31 * horizon_months
    windows: dict[str, list[pd.DataFrame]] = {name: [] for name in candidates}
    for k in range(backtest_origins):
        origin = month_end_index(train.days, horizon_months + k)
        days = _full_months_after(train.days, origin, horizon_months)
        for name in candidates:
            model = CostForecaster(name, seed, horizon_days).fit(train.until(origin))
            windows[name].append(_window(train, origin, model.predict_matrix(train.until(origin), days), panel))
    backtests = {name: _backtest_accuracy(ws) for name, ws in windows.items()}
    # The ensemble: the mean forecast of the two best candidates on the backtest.
    members = sorted(candidates, key=backtests.get, reverse=True)[:2] if len(candidates) > 1 else []
    if members:
        windows["ensemble"] = [w[0].assign(forecast=np.mean([w_.forecast.to_numpy() for w_ in w], axis=0))
                               for w in zip(*(windows[c] for c in members))]
        backtests["ensemble"] = _backtest_accuracy(windows["ensemble"])
    best = max(backtests, key=backtests.get)

    # Holdout: every candidate fitted on the training window only, scored once on the months after it.
    hold_days = len(panel.days) - cutoff - 1
    naive_level = by_level(_window(panel, cutoff, seasonal_naive(panel, cutoff, hold_days), panel))
    holdout_pred = {name: CostForecaster(name, seed, horizon_days).fit(train).predict_matrix(train, hold_days)
                    for name in candidates}
    if members:
        holdout_pred["ensemble"] = np.mean([holdout_pred[c] for c in members], axis=0)
    candidate_scores = {}
    for name, pred in holdout_pred.items():
        cal = Calibration.from_windows(windows[name], interval)
        levels = with_intervals(by_level(_window(panel, cutoff, pred, panel)), cal)
        candidate_scores[name] = {**_scores(levels, naive_level), "backtest_accuracy": backtests[name]}
    calibration = Calibration.from_windows(windows[best], interval)
    hold_window = _window(panel, cutoff, holdout_pred[best], panel)
    hold_levels = with_intervals(by_level(hold_window), calibration)
    lo, hi = calibration.daily_factors(hold_window.step)
    f_hold = hold_window.forecast
    daily_covered = (hold_window.actual >= f_hold * lo) & (hold_window.actual <= f_hold * hi)
    hold_curve = hold_window.groupby(["day", "step"], as_index=False)[["forecast", "actual"]].sum()
    lo, hi = calibration.daily_factors(hold_curve.step, "total")
    hold_curve = hold_curve.assign(lo=hold_curve.forecast * lo, hi=hold_curve.forecast * hi)
    scores = _scores(hold_levels, naive_level)
    last_month = monthly(pd.DataFrame({"service": np.repeat(panel.keys["service"].to_numpy(), 30),
                                       "day": np.tile(panel.days[cutoff - 29: cutoff + 1], len(panel.keys)),
                                       "v": panel.values[:, cutoff - 29: cutoff + 1].ravel()}), "v")
    holdout = hold_levels[hold_levels.level == "service"].drop(columns=["level", "project_id"]).reset_index(drop=True)
    metrics = {
        "model": best,
        "ensemble_members": members,
        "backtest_accuracy": backtests,
        "forecast_accuracy": scores["accuracy"],
        "seasonal_naive_accuracy": scores["seasonal_naive_accuracy"],
        "naive_accuracy": forecast_accuracy(holdout.actual, holdout.service.map(last_month.groupby(level=0).sum())),
        "mape": scores["mape"],
        "mase": scores["mase"],
        "interval": interval,
        "interval_coverage": scores["interval_coverage"],
        **{f"interval_coverage_{lv}": float(((g.actual >= g.lo) & (g.actual <= g.hi)).mean())
           for lv, g in hold_levels.groupby("level")},
        "interval_coverage_daily": float(daily_covered[f_hold > 0].mean()),
        "interval_coverage_daily_total": float(((hold_curve.actual >= hold_curve.lo)
                                                & (hold_curve.actual <= hold_curve.hi)).mean()),
        "candidates": candidate_scores,
        "holdout_start": str(panel.days[cutoff + 1].date()),
        "holdout_end": str(panel.days[-1].date()),
        "train_end": str(panel.days[cutoff].date()),
    }
    # Production model: refit on everything, forecast exactly the next `horizon_months` calendar months; its
    # intervals also learn from the holdout window's errors.
    fits = [CostForecaster(m, seed, horizon_days).fit(clean) for m in (members if best == "ensemble" else [best])]
    final = EnsembleForecaster(fits) if best == "ensemble" else fits[0]
    final_cal = Calibration.from_windows([*windows[best], hold_window], interval)
    last = len(panel.days) - 1
    future = _window(clean, last, final.predict_matrix(clean, _full_months_after(panel.days, last, horizon_months)),
                     None)
    future = future[future.groupby(["service", "project_id"]).forecast.transform("sum") > 0]
    lo, hi = final_cal.daily_factors(future.step)
    daily_fc = future.assign(yhat=future.forecast, lo=future.forecast * lo, hi=future.forecast * hi)[
        ["day", "service", "project_id", "yhat", "lo", "hi"]].reset_index(drop=True)
    # The month the data ends inside (if any) is completed by its actuals to date.
    end = panel.days[last]
    in_month = np.asarray((panel.days.year == end.year) & (panel.days.month == end.month)) & (
        (end + pd.Timedelta(days=1)).day != 1)
    mtd = panel.values[:, in_month]
    history_mtd = pd.DataFrame({"day": np.tile(panel.days[in_month], len(panel.keys)),
                                "service": np.repeat(panel.keys["service"].to_numpy(), mtd.shape[1]),
                                "project_id": np.repeat(panel.keys["project_id"].to_numpy(), mtd.shape[1]),
                                "net_cost": mtd.ravel()})
    future_levels = with_intervals(by_level(future, ("forecast",)), final_cal)
    series = future_levels[future_levels.level == "series"].drop(columns=["level", "step"]).reset_index(drop=True)
    alerts = budget_alerts(budgets or [], daily_fc, history_mtd,
                           final_cal.budget_calibration(sorted(future.step.unique())),
                           set(panel.keys["service"]), set(panel.keys["project_id"]))
    curve = future.groupby(["day", "step"], as_index=False).forecast.sum()
    lo, hi = final_cal.daily_factors(curve.step, "total")
    curve = curve.assign(lo=curve.forecast * lo, hi=curve.forecast * hi).drop(columns="step")
    history = pd.DataFrame({"day": panel.days, "actual": panel.values.sum(axis=0)})
    metrics["budget_alerts"] = int(alerts["alert"].sum())
    # Per budget, the highest chance of overspending in the horizon (a KFP metric each).
    metrics.update({f"budget_p_exceed_{k}": float(v) for k, v in alerts.groupby("budget").p_exceed.max().items()})
    return {"metrics": metrics, "model": final, "holdout": holdout, "forecast": series,
            "forecast_monthly": future_levels, "forecast_daily": daily_fc, "budget_alerts": alerts,
            "holdout_levels": hold_levels, "history": history,
            "holdout_curve": hold_curve.drop(columns="step"), "future_curve": curve}

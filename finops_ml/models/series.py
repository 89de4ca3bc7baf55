"""Anomalies in any time series of cost or usage, at any cadence (5-minute, hourly, daily ...), without labels.

What `finops-ml detect` runs on a CSV of `timestamp,value[,series_id]`. Per series:

- the cadence is the median step between timestamps; points are placed on that grid (a missing point stays missing);
- the season is a day for sub-daily data and a week for daily data (when the series spans three of them);
- a point's expected value is the median of the *accepted* values at the same phase of the last `seasons` seasons
  (or of the last `window` accepted values without a season): causal, and an anomaly does not leak into the
  baseline that judges the next points. A change that lasts `accept_after` points is accepted as the new normal;
- its score is the robust z of its residual: residual / (scale x expected), where scale is an exponentially
  weighted mean absolute *relative* residual of the accepted points (x 1.25, the normal-noise sigma of a mean
  absolute deviation; cost and usage noise grows with the level), at least 1% so that a flat series does not flag
  rounding noise;
- a point is anomalous when its score reaches `threshold` (a rise by default: `direction="both"` for drops too).
  The first season (or `window` points) only warms the baseline up: no score.

The same outlier-rejecting, causal idea as the billing detector (models/anomaly.py), which additionally knows
resources, weekday and month-end factors and learns its threshold from labels: this one needs none of that.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from finops_ml.errors import FinopsError

DAY = pd.Timedelta(days=1)


@dataclass
class SeriesAnomalyDetector:
    threshold: float = 4.0
    direction: str = "up"  # up | both
    seasons: int = 4
    window: int = 7
    accept_after: int | None = None  # points; default: one season (or `window`)
    scale_halflife: int | None = None  # points; default: two seasons (or 4 x `window`)

    def __post_init__(self):
        if self.direction not in ("up", "both"):
            raise FinopsError(f"direction must be 'up' or 'both', not {self.direction!r}.")
        if not self.threshold > 0:
            raise FinopsError(f"threshold must be positive, not {self.threshold}.")

    @staticmethod
    def period(cadence: pd.Timedelta, span: pd.Timedelta) -> int:
        """Points per season: a day for sub-daily data, a week for daily data, none otherwise."""
        if cadence < DAY and span >= 3 * DAY and (DAY / cadence) == round(DAY / cadence):
            return int(round(DAY / cadence))
        if cadence == DAY and span >= 21 * DAY:
            return 7
        return 1

    def score_series(self, times: pd.Series, values: pd.Series) -> pd.DataFrame:
        """Score one series (sorted, unique timestamps): expected, score (NaN while warming up), is_anomaly."""
        times = pd.to_datetime(times).reset_index(drop=True)
        values = pd.Series(values, dtype=float).reset_index(drop=True)
        n = len(times)
        out = pd.DataFrame({"expected": np.full(n, np.nan), "score": np.full(n, np.nan),
                            "is_anomaly": np.zeros(n, bool)})
        if n < 3:
            return out
        cadence = times.diff().dropna().median()
        if cadence <= pd.Timedelta(0):
            return out
        grid_pos = np.round((times - times.iloc[0]) / cadence).astype(int).to_numpy()
        period = self.period(cadence, times.iloc[-1] - times.iloc[0])
        size = int(grid_pos[-1]) + 1
        x = np.full(size, np.nan)
        x[grid_pos] = values.to_numpy()
        expected, score = self._filter(x, period)
        out["expected"] = expected[grid_pos]
        out["score"] = score[grid_pos]
        out["is_anomaly"] = np.nan_to_num(score[grid_pos], nan=0.0) >= self.threshold
        return out

    def _filter(self, x: np.ndarray, period: int) -> tuple[np.ndarray, np.ndarray]:
        size = len(x)
        seasonal = period > 1
        warmup = period if seasonal else self.window
        accept_after = self.accept_after or (period if seasonal else self.window)
        halflife = self.scale_halflife or (2 * period if seasonal else 4 * self.window)
        alpha = 1.0 - 0.5 ** (1.0 / halflife)
        accepted = np.full(size, np.nan)
        expected = np.full(size, np.nan)
        score = np.full(size, np.nan)
        scale = np.nan
        n_resid = 0
        rejected_run: list[int] = []
        recent_window: list[int] = []  # positions of the last accepted values (no season)
        for t in range(size):
            v = x[t]
            if np.isnan(v):
                continue
            if seasonal:
                back = t - period * np.arange(1, self.seasons + 1)
                lags = accepted[back[back >= 0]]
                lags = lags[np.isfinite(lags)]
                base = float(np.median(lags)) if len(lags) else np.nan
            else:
                vals = accepted[recent_window]
                base = float(np.median(vals)) if len(vals) else np.nan
            if np.isnan(base) or t < warmup:
                accepted[t] = v
                if not seasonal:
                    recent_window = (recent_window + [t])[-self.window:]
                continue
            expected[t] = base
            resid = v - base
            level = max(abs(base), 1e-9)
            if n_resid >= warmup:  # the scale has seen a season of residuals
                score[t] = (resid if self.direction == "up" else abs(resid)) / (max(scale, 0.01) * level)
            ok = np.isnan(score[t]) or abs(resid) <= self.threshold * max(scale, 0.01) * level
            if ok:
                accepted[t] = v
                rejected_run = []
                rel = abs(resid) / level * 1.25
                n_resid += 1
                # a plain mean over the first season of residuals, then exponentially weighted
                scale = rel if n_resid == 1 else scale + (rel - scale) * max(alpha, 1.0 / n_resid)
                if not seasonal:
                    recent_window = (recent_window + [t])[-self.window:]
            else:
                rejected_run.append(t)
                if len(rejected_run) >= accept_after:  # a lasting change is the new normal
                    accepted[rejected_run] = x[rejected_run]
                    if not seasonal:
                        recent_window = (recent_window + rejected_run)[-self.window:]
                    rejected_run = []
        return expected, score


def read_series_csv(path: str | Path) -> pd.DataFrame:
    """A CSV of timestamp,value[,series_id]; any malformed line is a clear error naming the file, line and column."""
    path = Path(path)
    if not path.exists():
        raise FinopsError(f"Input file {path} does not exist.")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise FinopsError(f"Input file {path} is empty; expected a header timestamp,value[,series_id].") from None
    except pd.errors.ParserError as exc:
        raise FinopsError(f"Input file {path} is not a valid CSV: {str(exc).strip()}.") from None
    frame.columns = [c.strip().lower() for c in frame.columns]
    missing = [c for c in ("timestamp", "value") if c not in frame.columns]
    if missing:
        raise FinopsError(f"Input file {path} lacks the column(s) {', '.join(missing)}; expected a header "
                          f"timestamp,value[,series_id], found {','.join(frame.columns)}.")
    if frame.empty:
        raise FinopsError(f"Input file {path} has a header but no rows.")
    times = pd.to_datetime(frame["timestamp"], errors="coerce", utc=True, format="mixed")
    bad = times.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise FinopsError(f"Input file {path}, line {i + 2}: timestamp {frame['timestamp'].iloc[i]!r} is not a date "
                          "or time (use ISO 8601, e.g. 2026-01-31T12:05:00Z).")
    values = pd.to_numeric(frame["value"], errors="coerce")
    bad = values.isna() | ~np.isfinite(values.fillna(0))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise FinopsError(f"Input file {path}, line {i + 2}: value {frame['value'].iloc[i]!r} is not a number.")
    out = pd.DataFrame({"timestamp": times, "value": values.astype(float)})
    if "series_id" in frame.columns:
        out["series_id"] = frame["series_id"]
    return out


def detect(frame: pd.DataFrame, detector: SeriesAnomalyDetector | None = None) -> pd.DataFrame:
    """Score every series of `frame` (timestamp, value[, series_id]); repeated timestamps of a series are summed."""
    detector = detector or SeriesAnomalyDetector()
    keys = ["series_id", "timestamp"] if "series_id" in frame.columns else ["timestamp"]
    frame = frame.groupby(keys, as_index=False, sort=True)["value"].sum()
    parts = []
    groups = frame.groupby("series_id", sort=True) if "series_id" in frame.columns else [(None, frame)]
    for _, s in groups:
        scored = detector.score_series(s["timestamp"], s["value"])
        parts.append(pd.concat([s.reset_index(drop=True), scored], axis=1))
    return pd.concat(parts, ignore_index=True)

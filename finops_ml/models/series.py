"""Anomalies in any time series of cost or usage, at any cadence (5-minute, hourly, daily ...), without labels.

What `finops-ml detect` runs on a CSV of `timestamp,value[,series_id]`. Per series:

- the cadence is the median step between timestamps; points are placed on that grid (a missing point stays missing,
  points sharing a grid slot are averaged for the baseline; a grid more than 20 times larger than the series, from
  bursts of points far apart, is not used: the points are then taken in order, without a season);
- the season is found in the data: a day or a week (in points of the grid), whichever has the larger
  autocorrelation of the detrended series (the week by a margin), if that reaches `min_autocorrelation`;
  otherwise there is none;
- a point's expected value is the median of the *accepted* values at the same phase of the last `seasons` seasons
  (or of the last `window` accepted values without a season): causal, and an anomaly does not leak into the
  baseline that judges the next points. When half of the last `accept_after` points (default: a season) were
  rejected, the change has lasted: those points are accepted and the history behind the baseline moves to the new
  level (median ratio, or median difference for a series with negative values), so a lasting shift is flagged for
  about half a season, not for every season the baseline remembers;
- its robust z is residual / scale, where scale is a robust spread of the accepted residuals of the last
  `scale_seasons` seasons: the larger of 1.4826 x their median absolute value and their 90th percentile / 1.645
  (both the normal sigma; the second keeps a series whose residuals are mostly exactly zero from flagging every move),
  and at least the series' noise floor (the median non-zero step between consecutive points once the seasonal
  profile is removed, / sqrt 2: an on/off series is judged against the size of its ordinary moves);
- two kinds of evidence raise an alarm:
  a *point* whose robust z reaches the larger of `threshold` and the (1 - `budget`) quantile of the series' own
  robust z (the alarm budget: a heavy-tailed series flags only its most extreme points), or
  a *lasting deviation*: the median robust z of the last `local_window` points reaches `local_threshold`
  (a shift, a drop or a burst of many points, which no single point may show);
- with `until_normal`, an alarm then lasts while the series stays disturbed: while the median deviation of the last
  `local_window` points is above what normal noise gives (its mean + 3 standard errors under a normal law), so an
  incident reads as one period, not as scattered points;
- `direction` says which deviations count: rises, drops or both. The first season (or `window` points) only warms
  the baseline up: no score.

The score written out is the larger of the point's robust z and the local median z scaled by
threshold / local_threshold, so that both kinds of evidence read on one scale. Expected value, scores and alarms are
causal except for two batch quantities taken over the whole series: the budget's quantile and the noise floor.
Measured on real labelled series: benchmarks/nab_detect.py.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from finops_ml.errors import FinopsError

DAY = pd.Timedelta(days=1)
MAD_SIGMA = 1.4826  # sigma / median |x| for a normal distribution
Q90_SIGMA = 1.6449  # 90th percentile of |x| / sigma for a normal distribution
DIRECTIONS = ("up", "down", "both")
WEEK_MARGIN = 0.05
MAX_GRID_SPARSITY = 20  # grid slots per point beyond which timestamps are taken as mere order


@dataclass
class SeriesAnomalyDetector:
    threshold: float = 5.0
    direction: str = "both"  # up | down | both
    budget: float = 0.005  # share of a series' points that may be point anomalies (0: no budget)
    local_threshold: float = 3.0
    local_window: int = 12  # points
    seasons: int = 4
    window: int = 12  # points of the baseline without a season
    accept_after: int | None = None  # points; default: one season (or `window`)
    scale_seasons: int = 4  # seasons (or 20 x `window` points) of residuals behind the scale
    min_autocorrelation: float = 0.3
    until_normal: bool = True  # an alarm lasts until the deviation of the last `local_window` points looks normal

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise FinopsError(f"direction must be one of {', '.join(DIRECTIONS)}, not {self.direction!r}.")
        if not self.threshold > 0 or not self.local_threshold > 0:
            raise FinopsError(f"thresholds must be positive, not {self.threshold} and {self.local_threshold}.")
        if not 0 <= self.budget < 1:
            raise FinopsError(f"budget must be a share of points in [0, 1), not {self.budget}.")
        if self.local_window < 1 or self.window < 1 or self.seasons < 1:
            raise FinopsError("local_window, window and seasons must be at least 1.")

    def period(self, x: np.ndarray, cadence: pd.Timedelta) -> int:
        """Points per season found in the data (a day or a week of grid points); 1 when neither shows.

        The week wins over the day only when its autocorrelation is higher by WEEK_MARGIN: a purely daily
        pattern also repeats every week, and a longer season needs more history for the same baseline.
        """
        best, best_r = 1, self.min_autocorrelation
        for season in (DAY, 7 * DAY):
            points = season / cadence
            if points != round(points) or points < 4 or len(x) < 3 * points:
                continue
            p = int(round(points))
            trend = pd.Series(x).rolling(p, center=True, min_periods=max(p // 2, 1)).median().to_numpy()
            r = _autocorrelation(x - trend, p)
            if r >= best_r + (WEEK_MARGIN if best > 1 else 0.0):
                best, best_r = p, r
        return best

    def score_series(self, times: pd.Series, values: pd.Series) -> pd.DataFrame:
        """Score one series (sorted timestamps): expected, score (NaN while warming up), is_anomaly."""
        expected, z = self.robust_z(times, values)
        score, flagged = self.decide(z)
        return pd.DataFrame({"expected": expected, "score": score, "is_anomaly": flagged})

    def robust_z(self, times: pd.Series, values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """Causal expected value and signed robust z of every point (NaN while warming up), in the input order."""
        times = pd.to_datetime(pd.Series(times)).reset_index(drop=True)
        values = pd.Series(values, dtype=float).reset_index(drop=True).to_numpy()
        n = len(times)
        expected, z = np.full(n, np.nan), np.full(n, np.nan)
        order = np.argsort(times.to_numpy(), kind="stable")
        times, values = times.iloc[order].reset_index(drop=True), values[order]
        cadence = times.diff().dropna().median() if n >= 3 else pd.Timedelta(0)
        if not cadence > pd.Timedelta(0):
            return expected, z
        slot = np.round((times - times.iloc[0]) / cadence).astype(int).to_numpy()
        seasonal = True
        if slot[-1] > MAX_GRID_SPARSITY * n:  # bursts far apart: a grid would be mostly empty, use the order alone
            slot, seasonal = np.arange(n), False
        size = int(slot[-1]) + 1
        counts = np.bincount(slot, minlength=size)
        with np.errstate(invalid="ignore"):
            x = np.bincount(slot, weights=values, minlength=size) / counts  # NaN where no point
        period = self.period(x, cadence) if seasonal else 1
        grid_expected, scale = self._filter(x, period, _noise_floor(x, period))
        expected[order] = grid_expected[slot]
        z[order] = (values - grid_expected[slot]) / scale[slot]
        return expected, z

    def decide(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Score (point z or scaled local median z, in `direction`) and anomaly flag of every point."""
        orient = {"up": 1.0, "down": -1.0, "both": None}[self.direction]
        w = self.local_window
        local = pd.Series(z).rolling(w, min_periods=w).median().to_numpy()
        point, local = (np.abs(z), np.abs(local)) if orient is None else (orient * z, orient * local)
        with np.errstate(invalid="ignore"):
            lasting = local >= self.local_threshold
            point_threshold = self.threshold
            # the budget is for isolated points: those inside a lasting deviation are judged by that evidence
            isolated = point[np.isfinite(point) & ~lasting]
            if self.budget > 0 and len(isolated):
                point_threshold = max(point_threshold, float(np.quantile(isolated, 1 - self.budget)))
            flagged = ((point >= point_threshold) | lasting) & np.isfinite(point)
            if self.until_normal:
                # median deviation of the last w points; normal noise stays below its mean + 3 standard errors
                spread = pd.Series(point).rolling(w, min_periods=1).median().to_numpy()
                if orient is None:  # median of w |N(0,1)|: 0.6745, standard error 0.5 / (2 phi(0.6745) sqrt(w))
                    normal = 0.6745 + 3 * 0.5 / (2 * 0.3178 * np.sqrt(w))
                else:  # median of w N(0,1): 0, standard error 1.2533 / sqrt(w)
                    normal = 3 * 1.2533 / np.sqrt(w)
                flagged = _hold(flagged, spread > normal)
        return np.fmax(point, local * (self.threshold / self.local_threshold)), flagged

    def _filter(self, x: np.ndarray, period: int, floor: float) -> tuple[np.ndarray, np.ndarray]:
        """Causal expected value and scale at every grid slot (NaN while warming up)."""
        size = len(x)
        seasonal = period > 1
        warmup = period if seasonal else self.window
        accept_after = self.accept_after or warmup
        scale_n = self.scale_seasons * period if seasonal else 20 * self.window
        refresh = max(1, period // 24)  # the scale is recomputed every `refresh` residuals (quantiles are costly)
        lags = period * np.arange(1, self.seasons + 1)
        accepted = np.full(size, np.nan)
        expected = np.full(size, np.nan)
        scale = np.full(size, np.nan)
        residuals: list[float] = []  # absolute residuals of accepted points, newest last
        outcomes: deque[tuple[int, bool]] = deque(maxlen=accept_after)  # (slot, rejected) of the last points
        recent: list[int] = []  # slots of the last accepted values (no season)
        current = np.nan
        for t in np.flatnonzero(np.isfinite(x)):
            v = x[t]
            past = accepted[t - lags[lags <= t]] if seasonal else accepted[recent]
            past = past[np.isfinite(past)]
            if t < warmup or not len(past):
                accepted[t] = v
                if not seasonal:
                    recent = (recent + [t])[-self.window:]
                continue
            base = float(np.median(past))
            expected[t] = base
            resid = v - base
            if len(residuals) >= warmup:  # the scale has seen a season of residuals
                if len(residuals) % refresh == 0 or np.isnan(current):
                    tail = np.asarray(residuals[-scale_n:])
                    current = max(MAD_SIGMA * float(np.median(tail)), float(np.quantile(tail, 0.9)) / Q90_SIGMA,
                                  floor, 1e-9 * max(abs(base), 1.0))
                scale[t] = current
            rejected = not np.isnan(scale[t]) and abs(resid) > self.threshold * scale[t]
            outcomes.append((t, rejected))
            if not rejected:
                accepted[t] = v
                residuals.append(abs(resid))
                if len(residuals) > 2 * scale_n:
                    del residuals[:scale_n]
                if not seasonal:
                    recent = (recent + [t])[-self.window:]
                continue
            pending = [u for u, r in outcomes if r]
            if len(pending) < max(1, accept_after // 2):
                continue
            # Half of the last `accept_after` points broke the baseline: a lasting change, the new normal. The
            # history behind the seasonal baseline moves to the new level at once (by the median ratio for a
            # non-negative series, else by the median difference), so that the change is not flagged for
            # `seasons` seasons more.
            if seasonal:
                lo = max(0, pending[0] - self.seasons * period)
                if np.all(x[pending] >= 0) and np.all(expected[pending] > 0) and np.nanmin(accepted) >= 0:
                    accepted[lo:pending[0]] *= float(np.median(x[pending] / expected[pending]))
                else:
                    accepted[lo:pending[0]] += float(np.median(x[pending] - expected[pending]))
            else:
                recent = sorted(set(recent) | set(pending))[-self.window:]
            accepted[pending] = x[pending]
            outcomes.clear()
        return expected, scale


def _hold(flagged: np.ndarray, disturbed: np.ndarray) -> np.ndarray:
    """An alarm, once raised, stays on while the series is disturbed."""
    out = flagged.copy()
    for t in range(1, len(out)):
        if not out[t] and out[t - 1] and disturbed[t]:
            out[t] = True
    return out


def _autocorrelation(y: np.ndarray, lag: int) -> float:
    a, b = y[:-lag], y[lag:]
    both = np.isfinite(a) & np.isfinite(b)
    if both.sum() < max(2 * lag, 30):
        return np.nan
    a, b = a[both], b[both]
    if a.std() == 0 or b.std() == 0:
        return np.nan
    return float(np.corrcoef(a, b)[0, 1])


def _noise_floor(x: np.ndarray, period: int) -> float:
    """Typical move between consecutive points once the seasonal profile (median per phase) is removed, / sqrt 2
    (the sigma of one point): non-zero moves only, so that a series that is mostly flat gets the size of its
    ordinary moves; 0 for a constant series. NaN slots of the grid are skipped."""
    if period > 1:
        phase = np.arange(len(x)) % period
        profile = pd.Series(x).groupby(phase).median().to_numpy()
        x = x - profile[phase]
    x = x[np.isfinite(x)]
    steps = np.abs(np.diff(x))
    steps = steps[steps > 1e-12 * max(float(np.max(np.abs(x))) if len(x) else 0.0, 1.0)]
    return float(np.median(steps)) / np.sqrt(2) if len(steps) else 0.0


def read_series_csv(path: str | Path) -> pd.DataFrame:
    """A CSV of timestamp,value[,series_id]; any malformed line is a clear error naming the file, line and column."""
    path = Path(path)
    if not path.exists():
        raise FinopsError(f"Input file {path} does not exist.")
    if not path.is_file():
        raise FinopsError(f"Input file {path} is a folder; give a CSV file timestamp,value[,series_id].")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise FinopsError(f"Input file {path} is empty; expected a header timestamp,value[,series_id].") from None
    except pd.errors.ParserError as exc:
        raise FinopsError(f"Input file {path} is not a valid CSV: {str(exc).strip()}.") from None
    except UnicodeDecodeError:
        raise FinopsError(f"Input file {path} is not a text (UTF-8) CSV file; give a CSV "
                          "timestamp,value[,series_id].") from None
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

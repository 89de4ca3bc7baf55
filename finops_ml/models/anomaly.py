"""Cost anomaly detection on daily cells (day x service x project), rises and drops, without labels.

A cell's expected cost is built bottom-up from its resources (the daily cost per resource of the
resource_daily_cost view; given daily cost per cell only, a cell is one resource):

- each resource has weekday factors, a month-end factor (the last two days of a month), a quarter-end factor (the
  last two days of March, June, September and December: quarter-close batch work, learnt apart from the other month
  ends once the resource has been seen at MIN_QUARTER_ENDS of them, else its month-end factor) and a noise scale
  learnt in `fit` (a resource the fit never saw borrows its service's);
- an established resource's expected cost is the median of its last `baseline_days` *accepted* de-seasonalised
  days times today's season. A day is accepted into the baseline only when it lies within `reject_sigmas` noise
  scales of it, so a level shift, a drift or a drop in progress does not leak into the baseline that judges it; a
  change that persists for `accept_after_days` days of the calendar is accepted as the new normal (the baseline
  restarts from the days since it began: a monthly fee that moved is its new normal at its second month), and a
  return to the former level within `accept_after_days` of that restores it at once (a long incident ended);
- an established *always-on* resource (a cost every day of its last `baseline_days`) that has no cost today is
  judged at a cost of 0 (an outage, a broken export, a deleted resource) for its first `stop_days` days without
  cost; after that it is gone, not expected any more;
- a resource younger than `warmup_days` is new spend (it ramps up): its cost is its own expectation, reported but not
  an anomaly, unless it runs away: once its cost has grown `runaway_factor` times since its first days, at
  `runaway_rate` a day or faster, it is expected at 0 (a runaway resource was not expected at all: all its cost is
  the anomaly, as a FinOps user counts it).

Everything is causal (a recursive filter over days: a cell only sees its past, with factors fixed in `fit`), so the
same detector runs event by event (`finops_ml.models.realtime`). A cell's excess is the sum of its judged resources'
excesses (a price change spread over every resource adds up at the cell), its score the robust z of that excess
against the resources' noise scales (a drop in log space: `cell_z`; over its last `persist_days` days where that is
larger: `persistent_z`), and its deviation the excess in % of the expected cost. A cell is an anomaly, direction
up or down, when its score reaches that direction's threshold, its deviation reaches `min_pct_deviation` and its
dollar impact reaches the minimum of its scope (a default, per service, per project).

The thresholds need no labels: on the training cells the score's robust body (median and 10% / 90% quantiles, which
anomalies hardly move) is extrapolated as a normal tail to the alarm budget of each direction (the share of normal
cells allowed to alarm). Feedback verdicts move a threshold as little as the marked cells require; ground truth
(synthetic data only) replaces it with the threshold of best F1 on the training window's labels (the F1 curve
smoothed over a band of scores: its exact maximum on a flat curve is chance). Nothing is ever tuned on the holdout.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field, fields, replace
from statistics import NormalDist

import numpy as np
import pandas as pd

from finops_ml.errors import InsufficientData
from finops_ml.models.metrics import event_metrics, precision_recall_f1

SKU_EWMA_ALPHA = 0.2  # a SKU's usual daily cost: EWMA over its resource's days (a SKU absent that day adds 0)
CAUSE_LABELS = ["owner", "cost_center", "plant"]
ANOMALY_COLUMNS = ["anomaly_id", "day", "service", "project_id", "direction", "net_cost", "expected", "impact",
                   "pct_deviation", "score", "cause_resource", "cause_sku", "cause_share",
                   *(f"cause_{c}" for c in CAUSE_LABELS)]
CELL_COLUMNS = [*ANOMALY_COLUMNS, "is_anomaly", "truth"]
FEEDBACK_COLUMNS = ["anomaly_id", "day", "service", "project_id", "verdict", "note", "marked_at"]
VERDICTS = ("expected", "unexpected")
DIRECTIONS = ("up", "down")
KEYS = ["service", "project_id"]
RESOURCE_KEYS = ["service", "project_id", "resource"]
MIN_BASELINE_DAYS = 5
BODY_QUANTILE = 0.9  # the score's body: its median and 10% / 90% quantiles
# Ground-truth thresholds: the training F1 curve smoothed over this width in log score (best_threshold). On a flat
# curve the exact maximum is chance: with drops scored in log space (`cell_z`) it cut a dev seed's drop recall to 0.
F1_SMOOTH_WIDTH = 0.25
EPS_SHARE = 0.01  # log ratios add 1% of the median resource-day cost: scale-free, and zero costs stay finite


@dataclass
class ResourcePanel:
    """Daily net cost per resource as a matrix (resources x days, NaN where a resource has no cost line)."""

    days: pd.DatetimeIndex
    resources: pd.DataFrame  # service, project_id, resource; row i is matrix row i
    cost: np.ndarray

    @classmethod
    def from_daily(cls, daily: pd.DataFrame) -> "ResourcePanel":
        """From daily cost per resource (day, service, project_id, resource_name, net_cost: the
        resource_daily_cost view), or per cell (no resource_name: each cell is one resource)."""
        names = daily["resource_name"].fillna("") if "resource_name" in daily.columns else ""
        flat = pd.DataFrame({"service": daily["service"], "project_id": daily["project_id"], "resource": names,
                             "day": pd.to_datetime(daily["day"]), "cost": daily["net_cost"].astype(float)})
        flat = flat.groupby([*RESOURCE_KEYS, "day"], sort=True, as_index=False)["cost"].sum()
        days = pd.date_range(flat["day"].min(), flat["day"].max(), freq="D")
        keys = flat[RESOURCE_KEYS].drop_duplicates().reset_index(drop=True)
        r_idx = pd.MultiIndex.from_frame(keys).get_indexer(pd.MultiIndex.from_frame(flat[RESOURCE_KEYS]))
        t_idx = ((flat["day"] - days[0]) // pd.Timedelta(days=1)).to_numpy()
        cost = np.full((len(keys), len(days)), np.nan)
        cost[r_idx, t_idx] = flat["cost"].to_numpy()
        return cls(days, keys, cost)


def anomaly_id(day: str, service: str, project_id: str) -> str:
    """A stable, link-able id of a daily cell's anomaly (the same in batch, real time and alerts)."""
    return "anom-" + hashlib.sha1(f"{day}|{service}|{project_id}".encode()).hexdigest()[:16]


def _month_end(days: pd.DatetimeIndex) -> np.ndarray:
    return np.asarray(days.day > days.days_in_month - 2)


def _quarter_end(days: pd.DatetimeIndex) -> np.ndarray:
    """The month-end days of March, June, September and December (calendar quarters, as most fiscal years)."""
    return _month_end(days) & np.asarray(days.month % 3 == 0)


MIN_QUARTER_ENDS = 2  # a quarter-end factor is learnt from at least this many quarter ends, else the month-end one


def _season(factors: pd.DataFrame, days: pd.DatetimeIndex) -> np.ndarray:
    """Each resource's season on each day (resources x days): weekday factor times the quarter-end factor on a
    quarter's last two days, the month-end factor on another month's last two days."""
    dow = factors[[f"dow{w}" for w in range(7)]].to_numpy()[:, np.asarray(days.dayofweek)]
    quarter_end = _quarter_end(days)[None, :]
    month_end = _month_end(days)[None, :]
    return dow * np.where(quarter_end, factors["quarter_end"].to_numpy()[:, None],
                          np.where(month_end, factors["month_end"].to_numpy()[:, None], 1.0))


def _learn_factors(panel: ResourcePanel, warmup_days: int, eps: float) -> pd.DataFrame:
    """Weekday factors, month-end and quarter-end factors and noise scale (log space) of each resource, robustly,
    from its history.

    Quarter ends are learnt apart from the other month ends: batch work that runs at the close of a quarter
    (reporting, consolidation, the quarter's ETL backfills) is as regular as the monthly close but larger, and
    mixing the two would inflate the month-end factor of every month and still fall short at the quarter's end. A
    quarter-end factor needs MIN_QUARTER_ENDS quarter ends with cost, else it is NaN (the month-end factor then
    serves, see `_fill_factors`)."""
    x = pd.DataFrame(panel.cost.T)  # days x resources
    weekday = np.asarray(panel.days.dayofweek)
    month_end = _month_end(panel.days)
    quarter_end = _quarter_end(panel.days)
    other_end = month_end & ~quarter_end
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        # A centred week holds every weekday once: the ratio to its mean is the weekday factor.
        ratio = (x / x.rolling(7, center=True, min_periods=7).mean()).to_numpy()
        dow = np.full((x.shape[1], 7), np.nan)
        for w in range(7):
            sel = ratio[(weekday == w) & ~month_end]
            ok = np.sum(np.isfinite(sel), axis=0) >= 4
            dow[ok, w] = np.nanmedian(sel[:, ok], axis=0)
        dow = dow / np.nanmean(dow, axis=1, keepdims=True)
        flat = x.to_numpy() / dow.T[weekday]
        level = pd.DataFrame(np.where(month_end[:, None], np.nan, flat))
        level = level.rolling(15, center=True, min_periods=5).median().to_numpy()
        ratio_end = flat / level
        me_ratio = ratio_end[other_end]
        me = np.where(np.sum(np.isfinite(me_ratio), axis=0) >= 3, np.nanmedian(me_ratio, axis=0), np.nan)
        qe_ratio = ratio_end[quarter_end]
        # quarters with a finite ratio, per resource (a quarter end is two days: count distinct quarters)
        quarter = np.asarray(panel.days.year * 4 + (panel.days.month - 1) // 3)[quarter_end]
        seen = np.isfinite(qe_ratio)
        n_quarters = np.array([len(np.unique(quarter[seen[:, r]])) for r in range(seen.shape[1])], dtype=int)
        qe = np.where(n_quarters >= MIN_QUARTER_ENDS, np.nanmedian(np.where(seen, qe_ratio, np.nan), axis=0)
                      if qe_ratio.shape[0] else np.nan, np.nan)
        # Noise: log residual around the centred level, once the resource has settled.
        age = np.arange(x.shape[0])[:, None] - np.argmax(np.isfinite(x.to_numpy()), axis=0)[None, :]
        expected = level * np.where(month_end[:, None], np.nan_to_num(me, nan=1.0), 1.0)
        resid = np.log((np.maximum(flat, 0.0) + eps) / (np.maximum(expected, 0.0) + eps))
        resid[(age < warmup_days) | month_end[:, None]] = np.nan
        enough = np.sum(np.isfinite(resid), axis=0) >= 20
        med = np.nanmedian(resid[:, enough], axis=0)
        sigma = np.full(x.shape[1], np.nan)
        sigma[enough] = 1.4826 * np.nanmedian(np.abs(resid[:, enough] - med), axis=0)
    out = panel.resources.copy()
    for w in range(7):
        out[f"dow{w}"] = dow[:, w]
    out["month_end"] = me
    out["quarter_end"] = qe
    out["sigma"] = sigma
    return out


def _fill_factors(factors: pd.DataFrame, resources: pd.DataFrame) -> pd.DataFrame:
    """Factors for `resources`: their own where learnt, else their service's median, else neutral (the quarter-end
    factor: else the month-end factor, a quarter end being a month end)."""
    if "quarter_end" not in factors.columns:  # a detector fitted before quarter ends were learnt: month ends serve
        factors = factors.assign(quarter_end=np.nan)
    cols = [f"dow{w}" for w in range(7)] + ["month_end", "quarter_end", "sigma"]
    own = resources.merge(factors, on=RESOURCE_KEYS, how="left")
    by_service = factors.groupby("service")[cols].median()
    svc = by_service.reindex(own["service"]).reset_index(drop=True)
    neutral = {**{f"dow{w}": 1.0 for w in range(7)}, "month_end": 1.0,
               "sigma": float(np.nanmedian(factors["sigma"])) if factors["sigma"].notna().any() else 0.05}
    for c in cols:
        own[c] = own[c].fillna(svc[c])
        if c != "quarter_end":
            own[c] = own[c].fillna(neutral[c])
    own["quarter_end"] = own["quarter_end"].fillna(own["month_end"])
    own[[f"dow{w}" for w in range(7)]] = own[[f"dow{w}" for w in range(7)]].clip(0.2, 3.0)
    own[["month_end", "quarter_end"]] = own[["month_end", "quarter_end"]].clip(0.5, 5.0)
    own["sigma"] = own["sigma"].clip(0.01, 1.0)
    return own


@dataclass
class FilterSettings:
    """What the causal filter needs (the batch and the real-time detector share it)."""

    baseline_days: int
    warmup_days: int
    reject_sigmas: float
    accept_after_days: int
    stop_days: int
    runaway_factor: float
    runaway_rate: float
    eps: float


def _causal_filter(flat: np.ndarray, season: np.ndarray, sigma: np.ndarray,
                   s: FilterSettings) -> tuple[np.ndarray, np.ndarray]:
    """The causal outlier-rejecting filter over de-seasonalised costs (resources x days).

    Returns, per resource and day, the expected de-seasonalised cost of a judged resource (NaN where it is not
    judged: absent, or new spend in its warm-up) and its observed de-seasonalised cost (its cost, 0 for an always-on
    resource that stopped billing, NaN otherwise). Day t's expectation of an established resource is the median of its
    last `baseline_days` accepted values before t; a runaway new resource is expected at 0 (`flat` times `season` is
    the cost: a new resource's own season is unknown, so its growth since its first level must show in its costs and
    in its de-seasonalised costs alike for it to run away).
    """
    n_res, n_days = flat.shape
    accepted = np.full((n_res, s.baseline_days), np.nan)
    recent = np.full((n_res, s.baseline_days), np.nan)
    level0 = np.full(n_res, np.nan)  # a resource's first level: cost, and de-seasonalised
    flat0 = np.full(n_res, np.nan)
    previous = np.full((n_res, s.baseline_days), np.nan)  # the accepted days before the last new normal
    previous_base = np.full(n_res, np.nan)
    reset_day = np.full(n_res, -(10 ** 9))
    pos_acc = np.zeros(n_res, int)
    pos_rec = np.zeros(n_res, int)
    pos_prev = np.zeros(n_res, int)
    rejected_since = np.full(n_res, -1)  # the first day of the current run of rejected days (-1: none)
    rejected_run = np.zeros(n_res, int)  # ... and how many rejected days (with cost, or missing) it holds
    age = np.full(n_res, -1)
    run = np.zeros(n_res, int)  # consecutive days with cost, up to the last one
    gap = np.zeros(n_res, int)  # days without cost since the last one
    ref_out = np.full((n_res, n_days), np.nan)
    obs_out = np.full((n_res, n_days), np.nan)
    rows = np.arange(n_res)
    for t in range(n_days):
        x = flat[:, t]
        cost = x * season[:, t]
        present = np.isfinite(x)
        age = np.where(age >= 0, age + 1, np.where(present, 0, -1))
        n_acc = np.sum(np.isfinite(accepted), axis=1)
        srt = np.sort(accepted, axis=1)  # NaN last
        base = 0.5 * (srt[rows, np.maximum((n_acc - 1) // 2, 0)] + srt[rows, np.maximum(n_acc // 2, 0)])
        base = np.where(n_acc >= MIN_BASELINE_DAYS, base, np.nan)
        established = (age >= s.warmup_days) & np.isfinite(base)
        missing = ~present & established & (run >= s.baseline_days) & (gap < s.stop_days)
        observed = present | missing
        obs = np.where(present, x, np.where(missing, 0.0, np.nan))
        # A new resource that grew by runaway_factor at runaway_rate a day or faster since its first day runs away.
        # Its first level is the larger of its first two days (a resource created in the day bills part of it).
        steep = np.maximum(s.runaway_factor, (1.0 + s.runaway_rate) ** np.maximum(age, 0))
        runaway = (present & ~established & (age >= 2) & (level0 > 0) & (cost >= steep * level0)
                   & (x >= steep * flat0))
        ref_out[:, t] = np.where(established & observed, base, np.where(runaway, 0.0, np.nan))
        obs_out[:, t] = obs
        dev = np.abs(np.log((np.maximum(obs, 0.0) + s.eps) / (np.maximum(base, 0.0) + s.eps)))
        ok = observed & (~established | (dev <= s.reject_sigmas * sigma))
        # Back to the level before a recent new normal (the end of a long incident): that level again, at once.
        back = np.abs(np.log((np.maximum(obs, 0.0) + s.eps) / (np.maximum(previous_base, 0.0) + s.eps)))
        revert = (observed & ~ok & established & (t - reset_day <= s.accept_after_days)
                  & (back <= s.reject_sigmas * sigma))
        if revert.any():
            accepted[revert] = previous[revert]
            pos_acc[revert] = pos_prev[revert]
            previous_base[revert] = np.nan
            ok = ok | revert
        rejected_since = np.where(ok, -1, np.where(observed & (rejected_since < 0), t, rejected_since))
        rejected_run = np.where(observed & ~ok, rejected_run + 1, np.where(ok, 0, rejected_run))
        # record every observed value; accept the normal ones
        recent[rows[observed], pos_rec[observed]] = obs[observed]
        pos_rec = np.where(observed, (pos_rec + 1) % s.baseline_days, pos_rec)
        accepted[rows[ok], pos_acc[ok]] = obs[ok]
        pos_acc = np.where(ok, (pos_acc + 1) % s.baseline_days, pos_acc)
        # A change that has lasted `accept_after_days` is the new normal: restart from the days since it began.
        # Lasted in days of the calendar, not in days with cost: a charge billed once a month (a support fee that
        # is a share of last month's spend, a subscription) that moved is its new normal at its second month, not
        # after 21 months; and its new normal is its values since the change, not the months before it (a resource
        # billed daily has more rejected days than the baseline holds by then: the same thing).
        reset = observed & (rejected_since >= 0) & (t - rejected_since + 1 >= s.accept_after_days)
        if reset.any():
            previous[reset] = accepted[reset]
            pos_prev[reset] = pos_acc[reset]
            previous_base[reset] = base[reset]
            reset_day[reset] = t
            r = np.flatnonzero(reset)
            newest = (pos_rec[r][:, None] - 1 - np.arange(s.baseline_days)[None, :]) % s.baseline_days
            since = np.arange(s.baseline_days)[None, :] < rejected_run[r][:, None]
            fresh = np.full((len(r), s.baseline_days), np.nan)
            fresh[np.arange(len(r))[:, None], newest] = np.where(since, recent[r[:, None], newest], np.nan)
            accepted[reset] = fresh
            pos_acc[reset] = pos_rec[reset]
            rejected_since[reset] = -1
            rejected_run[reset] = 0
        level0 = np.where(present & (age == 0), cost, np.where(present & (age == 1), np.fmax(level0, cost), level0))
        flat0 = np.where(present & (age == 0), x, np.where(present & (age == 1), np.fmax(flat0, x), flat0))
        run = np.where(present, np.where(gap == 0, run + 1, 1), run)
        gap = np.where(present, 0, np.where(age >= 0, gap + 1, 0))
    return ref_out, obs_out


def cell_z(excess, expected_judged, variance, eps):
    """A cell's score: its excess over the noise of its judged resources (a robust z). A drop is measured in log
    space (the log ratio of the judged cost to its expectation over the cell's relative noise): a cost cannot fall
    below 0, so a resource that lost 90% of its cost is far out in the tail of its noise even where that noise is
    wide, while a rise keeps its linear score (the two directions have their own thresholds). The two agree for a
    small change."""
    excess, expected = np.asarray(excess, float), np.asarray(expected_judged, float) + eps
    noise = np.sqrt(np.asarray(variance, float) + eps ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        down = np.log(np.maximum(expected + excess, eps) / expected) * expected / noise
    return np.where(excess < 0, np.minimum(down, excess / noise), excess / noise)


def same_way(excess, past_excess):
    """An earlier day's excess as far as it moved the same way as today's `excess`, and at most as much."""
    excess = np.asarray(excess, float)
    return np.where(excess >= 0, np.clip(past_excess, 0.0, np.maximum(excess, 0.0)),
                    np.clip(past_excess, np.minimum(excess, 0.0), 0.0))


def persistent_z(z, excess, variance, past_excess, past_variance, eps):
    """A cell's score `z` (`cell_z`), or its persistent score when that is larger: the excess of its last days
    (today's and the sums over its previous days of `same_way` and of the variance) over their noise. A change that
    lasts (a spread over a service's resources, a drift, a level shift) adds up over its days, while a spike that
    ended or a step back adds nothing to a quiet day. Not discounted for noise that comes in runs (a k-day sum of
    autocorrelated noise spreads wider than sqrt(k) days): the thresholds are learnt on this score, and discounts of
    0.6-0.8 had a lower F1 on dev seeds."""
    total = np.asarray(excess, float) + past_excess
    zk = total / np.sqrt(np.asarray(variance, float) + past_variance + eps ** 2)
    return np.where(np.abs(zk) > np.abs(z), zk, z)


def cell_costs(daily: pd.DataFrame) -> pd.DataFrame:
    """Daily cost per cell (day, service, project_id, net_cost) from cost per resource, or as it is."""
    if "resource_name" not in daily.columns:
        return daily
    return daily.groupby(["day", *KEYS], as_index=False, sort=True)["net_cost"].sum()


def _body_threshold(z: np.ndarray, direction: str, budget: float) -> float:
    """The score a normal cell reaches with probability `budget`: the normal tail extrapolated from the robust
    body of the training scores (median and the 10% / 90% quantile of that side), at least 1."""
    z = z[np.isfinite(z)]
    if len(z) < 20:
        return float("nan")
    k = NormalDist().inv_cdf(1.0 - budget)
    q = NormalDist().inv_cdf(BODY_QUANTILE)
    med = float(np.median(z))
    if direction == "up":
        scale = (float(np.quantile(z, BODY_QUANTILE)) - med) / q
        return max(med + scale * k, 1.0)
    scale = (med - float(np.quantile(z, 1.0 - BODY_QUANTILE))) / q
    return max(-med + scale * k, 1.0)


def refine_threshold(scores: np.ndarray, anomalous: np.ndarray, start: float) -> float:
    """The threshold closest to `start` that classifies the marked cells best (fewest marked cells on the wrong
    side): feedback moves a threshold only as far as the verdicts require."""
    scores, anomalous = np.asarray(scores, float), np.asarray(anomalous, bool)
    if not len(scores):
        return start
    s = np.unique(scores)
    candidates = np.unique(np.r_[start, 0.5 * (s[1:] + s[:-1]), s[0] - 1e-9, s[-1] + 1e-9])
    errors = np.array([np.sum((scores >= t) != anomalous) for t in candidates])
    best = candidates[errors == errors.min()]
    return float(best[np.argmin(np.abs(best - start))])


@dataclass
class CostAnomalyDetector:
    window_days: int = 28  # a resource's history window: its warm-up, and (half of it) its baseline
    n_estimators: int = 200  # unused: the detector has no forest any more; kept so that configs still validate
    seed: int = 42
    reject_sigmas: float = 2.0  # at 3, a drift of 2-5% a day crept into the baseline for days before it was rejected
    accept_after_days: int = 21
    alarm_budget_up: float = 0.002  # share of normal cells allowed to alarm, per direction (label-free thresholds)
    alarm_budget_down: float = 0.002
    threshold_up: float | None = None  # fixed score thresholds instead of learnt ones
    threshold_down: float | None = None
    min_pct_deviation: float = 25.0  # an anomaly deviates by at least this % of the cell's expected cost
    min_impact: float = 0.0  # ... and by at least this many dollars (overrides per project, else per service)
    min_impact_by_service: dict[str, float] = field(default_factory=dict)
    min_impact_by_project: dict[str, float] = field(default_factory=dict)
    stop_days: int = 3  # days an always-on resource without cost is judged at 0 before it is taken as gone
    runaway_factor: float = 1.5  # a new resource that grew this much since its first day ...
    runaway_rate: float = 0.10  # ... at this rate a day or faster runs away (a usual ramp-up is slower)
    persist_days: int = 5  # a cell's score is also judged over its last days (`persistent_z`); 1: today only
    threshold_up_: float = float("nan")
    threshold_down_: float = float("nan")
    eps_: float = float("nan")
    calibration_: dict = field(default_factory=dict, repr=False)
    factors_: pd.DataFrame | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, a, seed: int = 42) -> "CostAnomalyDetector":
        """An unfitted detector with the settings of an `AnomalyConfig` (finops_ml.config)."""
        return cls(window_days=a.window_days, n_estimators=a.n_estimators, seed=seed,
                   alarm_budget_up=a.alarm_budget_up, alarm_budget_down=a.alarm_budget_down,
                   threshold_up=a.threshold_up, threshold_down=a.threshold_down,
                   min_pct_deviation=a.min_pct_deviation, min_impact=a.min_impact_usd,
                   min_impact_by_service=dict(a.min_impact_usd_by_service),
                   min_impact_by_project=dict(a.min_impact_usd_by_project), stop_days=a.stop_days,
                   runaway_factor=a.runaway_factor, runaway_rate=a.runaway_rate)

    @property
    def warmup_days(self) -> int:
        """A new resource ramps up: it is new spend, not judged, until it has a window of history and a week."""
        return self.window_days + 7

    @property
    def baseline_days(self) -> int:
        """The baseline is the median of this many accepted days (all of them after the warm-up's ramp)."""
        return max(self.window_days // 2, MIN_BASELINE_DAYS)

    @property
    def threshold_(self) -> float:
        """The rise threshold (the direction most alerts have)."""
        return self.threshold_up_

    def filter_settings(self) -> FilterSettings:
        return FilterSettings(self.baseline_days, self.warmup_days, self.reject_sigmas, self.accept_after_days,
                              self.stop_days, self.runaway_factor, self.runaway_rate, self.eps_)

    def thresholds(self) -> dict[str, float]:
        return {"up": self.threshold_up_, "down": self.threshold_down_}

    def min_impact_for(self, service: str, project_id: str) -> float:
        """The minimum dollar impact of an anomaly in this cell: its project's, else its service's, else the default."""
        if project_id in self.min_impact_by_project:
            return float(self.min_impact_by_project[project_id])
        return float(self.min_impact_by_service.get(service, self.min_impact))

    def features(self, daily: pd.DataFrame) -> pd.DataFrame:
        """Per-cell expected cost, excess, score and deviation from each resource's own past (causal)."""
        if self.factors_ is None:
            raise ValueError("CostAnomalyDetector.features needs a fitted detector: call fit first.")
        panel = ResourcePanel.from_daily(daily)
        factors = _fill_factors(self.factors_, panel.resources)
        season = _season(factors, panel.days)
        x = panel.cost
        sigma = factors["sigma"].to_numpy()
        ref, obs = _causal_filter(x / season, season, sigma, self.filter_settings())
        judged = np.isfinite(ref)
        present = np.isfinite(x)
        expected_r = np.where(judged, ref * season, np.where(present, x, 0.0))  # new resources explain themselves
        excess_r = np.where(judged, obs * season - expected_r, 0.0)
        var_r = np.where(judged, (sigma[:, None] * (expected_r + self.eps_)) ** 2, 0.0)
        new_r = np.where(present & ~judged, x, 0.0)

        # Resources -> cells
        cell_keys = panel.resources[KEYS].drop_duplicates().sort_values(KEYS).reset_index(drop=True)
        cell_of_res = pd.MultiIndex.from_frame(cell_keys).get_indexer(pd.MultiIndex.from_frame(panel.resources[KEYS]))
        n_cells, n_days = len(cell_keys), len(panel.days)

        def to_cells(m: np.ndarray) -> np.ndarray:
            out = np.zeros((n_cells, n_days))
            np.add.at(out, cell_of_res, m)
            return out

        seen = to_cells((present | judged).astype(float)) > 0
        n_judged = to_cells(judged.astype(float))
        actual_c = to_cells(np.nan_to_num(x))
        expected_c, excess_c, var_c, new_c = to_cells(expected_r), to_cells(excess_r), to_cells(var_r), to_cells(new_r)
        judged_c = to_cells(np.where(judged, expected_r, 0.0))
        z = np.clip(cell_z(excess_c, judged_c, var_c, self.eps_), -1e6, 1e6)
        if self.persist_days > 1:  # the cell's previous days (none before the first)
            past_excess, past_var = np.zeros_like(excess_c), np.zeros_like(var_c)
            for j in range(1, self.persist_days):
                past_excess[:, j:] += same_way(excess_c[:, j:], excess_c[:, :-j])
                past_var[:, j:] += var_c[:, :-j]
            z = np.clip(persistent_z(z, excess_c, var_c, past_excess, past_var, self.eps_), -1e6, 1e6)
        with np.errstate(divide="ignore", invalid="ignore"):
            deviation = np.where(expected_c > 0, 100.0 * excess_c / expected_c, np.nan)

        # The cause: the judged resource of the cell that moved most in the cell's direction.
        up = excess_c >= 0
        rank_up = np.where(judged, excess_r, -np.inf)
        rank_down = np.where(judged, -excess_r, -np.inf)
        top = np.full((n_cells, n_days), -1)
        top_excess = np.zeros((n_cells, n_days))
        cols = np.arange(n_days)
        for c in range(n_cells):
            members = np.flatnonzero(cell_of_res == c)
            for ranked, side in ((rank_up, up[c]), (rank_down, ~up[c])):
                best = members[np.argmax(ranked[members], axis=0)]
                ok = side & np.isfinite(ranked[best, cols])
                top[c] = np.where(ok, best, top[c])
                top_excess[c] = np.where(ok, excess_r[best, cols], top_excess[c])

        c_idx, t_idx = np.nonzero(seen)
        top_cell = top[c_idx, t_idx]
        names = panel.resources["resource"].to_numpy(object)
        return pd.DataFrame({
            "day": panel.days[t_idx], "service": cell_keys["service"].to_numpy(object)[c_idx],
            "project_id": cell_keys["project_id"].to_numpy(object)[c_idx], "net_cost": actual_c[c_idx, t_idx],
            "cause_resource": np.where(top_cell >= 0, names[np.maximum(top_cell, 0)], None),
            "cause_excess": top_excess[c_idx, t_idx], "expected": expected_c[c_idx, t_idx],
            "established_cost": actual_c[c_idx, t_idx] - new_c[c_idx, t_idx], "new_cost": new_c[c_idx, t_idx],
            "judged": n_judged[c_idx, t_idx] > 0, "excess": excess_c[c_idx, t_idx], "robust_z": z[c_idx, t_idx],
            "deviation": deviation[c_idx, t_idx],
            "log_ratio": np.log((np.maximum(actual_c, 0.0) + self.eps_) / (np.maximum(expected_c, 0.0) + self.eps_))[
                c_idx, t_idx],
        })

    def _eligible(self, cells: pd.DataFrame) -> np.ndarray:
        """Cells large enough to be an anomaly whatever the score: a judged resource, the minimum % and $ impact."""
        floor = np.fromiter((self.min_impact_for(s, p) for s, p in zip(cells.service, cells.project_id)), float,
                            len(cells))
        deviation = np.where(np.isfinite(cells.deviation), np.abs(cells.deviation), np.inf)
        return (cells.judged & (deviation >= self.min_pct_deviation) & (np.abs(cells.excess) >= floor)
                & (cells.excess != 0)).to_numpy()

    def fit(self, daily: pd.DataFrame, truth: pd.DataFrame | None = None,
            feedback: pd.DataFrame | None = None) -> "CostAnomalyDetector":
        """Learn resource factors, then the thresholds: from the alarm budgets (no labels needed), refined by feedback
        verdicts, or (synthetic data) from the ground truth of the training window."""
        daily = daily.assign(day=pd.to_datetime(daily["day"]))
        positive = daily["net_cost"][daily["net_cost"] > 0]
        self.eps_ = EPS_SHARE * float(positive.median()) if len(positive) else 1e-6
        self.factors_ = _learn_factors(ResourcePanel.from_daily(daily), self.warmup_days, self.eps_)
        cells = self.features(daily)
        judged = cells[cells.judged]
        z = judged.robust_z.to_numpy()
        budgets = {"up": self.alarm_budget_up, "down": self.alarm_budget_down}
        fixed = {"up": self.threshold_up, "down": self.threshold_down}
        eligible = self._eligible(cells)
        score = np.abs(cells.robust_z.to_numpy())
        direction = np.where(cells.excess < 0, "down", "up")
        truth_labels = label_cells(cells, truth) if truth is not None else None
        marks = _feedback_marks(cells, feedback)
        self.calibration_ = {}
        for d in DIRECTIONS:
            label_free = _body_threshold(z, d, budgets[d])
            if not np.isfinite(label_free):
                label_free = NormalDist().inv_cdf(1.0 - budgets[d])
            side = eligible & (direction == d)
            if fixed[d] is not None:
                t, source = float(fixed[d]), "config"
            elif truth_labels is not None and (truth_labels & (direction == d)).any():
                t, source = best_threshold(np.where(side, score, 0.0), truth_labels & (direction == d),
                                           F1_SMOOTH_WIDTH), "ground_truth"
            elif marks is not None and (marks.notna().to_numpy() & side).any():
                m = marks.notna().to_numpy() & side
                t = refine_threshold(score[m], marks.to_numpy()[m].astype(bool), label_free)
                source = "feedback"
            else:
                t, source = label_free, "alarm_budget"
            setattr(self, f"threshold_{d}_", float(t))
            self.calibration_[d] = {"threshold": float(t), "source": source, "label_free": float(label_free),
                                    "training_alarm_rate": float(np.mean(side & (score >= t))) if len(cells) else 0.0}
        return self

    def decide(self, cells: pd.DataFrame) -> pd.DataFrame:
        """Add direction, score, is_anomaly, impact and pct_deviation (both 0 where there is no anomaly)."""
        cells = cells.copy()
        cells["direction"] = np.where(cells.excess < 0, "down", "up")
        cells["score"] = np.abs(cells.robust_z)
        limit = np.where(cells.direction == "up", self.threshold_up_, self.threshold_down_)
        cells["is_anomaly"] = self._eligible(cells) & (cells.score.to_numpy() >= limit)
        cells["impact"] = np.where(cells.is_anomaly, cells.excess, 0.0)
        cells["pct_deviation"] = np.where(cells.is_anomaly, cells.deviation, 0.0)
        return cells

    def score(self, daily: pd.DataFrame, resources: pd.DataFrame | None = None) -> pd.DataFrame:
        """Score every cell; an anomalous one gets its direction, dollar impact (actual - expected), % deviation and
        cause: the resource, its SKU (when `daily` has a `sku` column) and labels (from the `resources` view)."""
        cells = self.decide(self.features(daily))
        cells["anomaly_id"] = [anomaly_id(str(d.date()), s, p) if a else None
                               for d, s, p, a in zip(cells.day, cells.service, cells.project_id, cells.is_anomaly)]
        return explain(cells, daily, resources)


def unfitted_copy(detector: CostAnomalyDetector) -> CostAnomalyDetector:
    """A detector with the settings of `detector` and nothing it learnt (a field a pickle predates: its default)."""
    return CostAnomalyDetector(**{f.name: getattr(detector, f.name) for f in fields(CostAnomalyDetector)
                                  if not f.name.endswith("_") and hasattr(detector, f.name)})


def _feedback_marks(cells: pd.DataFrame, feedback: pd.DataFrame | None) -> pd.Series | None:
    """Per cell: True (marked unexpected: an anomaly), False (marked expected), NaN (not marked)."""
    if feedback is None or feedback.empty:
        return None
    marks = feedback.drop_duplicates(["day", "service", "project_id"], keep="last")
    verdict = {(pd.Timestamp(d), s, p): v == "unexpected"
               for d, s, p, v in zip(marks.day, marks.service, marks.project_id, marks.verdict)}
    return pd.Series([verdict.get((d, s, p), np.nan) for d, s, p in zip(cells.day, cells.service, cells.project_id)],
                     index=cells.index, dtype=object)


def explain(cells: pd.DataFrame, daily: pd.DataFrame, resources: pd.DataFrame | None = None) -> pd.DataFrame:
    """Name the cause of each anomalous cell: its top resource (the one that moved most in the cell's direction) and
    its share of the cell's excess, the resource's SKU that moved most from its usual daily cost (EWMA over the
    resource's earlier days), and the resource's labels."""
    cells = cells.copy()
    flagged = cells.is_anomaly & cells.cause_resource.notna()
    excess = cells.net_cost - cells.expected
    cells["cause_share"] = np.where(flagged & (excess != 0), cells.cause_excess / excess.where(excess != 0), np.nan)
    cells["cause_sku"] = None
    for c in CAUSE_LABELS:
        cells[f"cause_{c}"] = None
    cells.loc[~flagged, "cause_resource"] = None
    if not flagged.any():
        return cells
    if "sku" in daily.columns and "resource_name" in daily.columns:
        wanted = cells.loc[flagged, ["service", "project_id", "cause_resource"]].drop_duplicates()
        rows = daily.merge(wanted.rename(columns={"cause_resource": "resource_name"}),
                           on=["service", "project_id", "resource_name"])
        rows = rows[rows["sku"].notna()]
        histories = {k: _SkuHistory(g) for k, g in rows.groupby(["service", "project_id", "resource_name"])}
        skus = []
        for i in np.flatnonzero(flagged):
            row = cells.iloc[i]
            history = histories.get((row.service, row.project_id, row.cause_resource))
            skus.append(history.top(row.day, row.direction) if history is not None else None)
        cells.loc[flagged, "cause_sku"] = skus
    if resources is not None and "resource_name" in resources.columns:
        labels = resources.drop_duplicates(["project_id", "resource_name"]).set_index(["project_id", "resource_name"])
        keys = pd.MultiIndex.from_arrays([cells.loc[flagged, "project_id"], cells.loc[flagged, "cause_resource"]])
        for c in CAUSE_LABELS:
            if c in labels.columns:
                cells.loc[flagged, f"cause_{c}"] = labels[c].reindex(keys).to_numpy()
    return cells


class _SkuHistory:
    """A resource's daily cost per SKU (days with cost x SKUs, sorted) and, before each of those days, each SKU's
    usual daily cost: an EWMA over the resource's earlier days with cost (a SKU absent that day adds 0)."""

    def __init__(self, rows: pd.DataFrame):
        self.days, d_idx = np.unique(pd.to_datetime(rows["day"]).to_numpy(), return_inverse=True)
        self.skus, s_idx = np.unique(rows["sku"].astype(str).to_numpy(), return_inverse=True)
        self.cost = np.zeros((len(self.days), len(self.skus)))
        np.add.at(self.cost, (d_idx, s_idx), rows["net_cost"].to_numpy(float))
        self.usual = np.zeros((len(self.days) + 1, len(self.skus)))
        for i, values in enumerate(self.cost):
            self.usual[i + 1] = (1 - SKU_EWMA_ALPHA) * self.usual[i] + SKU_EWMA_ALPHA * values

    def top(self, day, direction: str = "up") -> str | None:
        """The SKU whose cost on `day` moved most from its usual cost (up: rose most; down: fell most, a SKU
        without cost that day counting 0)."""
        i = int(np.searchsorted(self.days, np.datetime64(day)))
        billed = i < len(self.days) and self.days[i] == np.datetime64(day)
        if direction == "up" and not billed:
            return None
        move = (self.cost[i] if billed else 0.0) - self.usual[i]
        return str(self.skus[int(np.argmin(move) if direction == "down" else np.argmax(move))])


def label_cells(cells: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    """Ground truth per cell: True where a material injected anomaly touched it."""
    material = truth[truth.material].assign(day=lambda t: pd.to_datetime(t.date))
    marks = set(zip(material.day, material.service, material.project_id))
    return np.fromiter(((d, s, p) in marks for d, s, p in zip(cells.day, cells.service, cells.project_id)),
                       bool, len(cells))


def best_threshold(scores: np.ndarray, labels: np.ndarray, smooth: float = 0.0) -> float:
    """The score threshold with the best F1 on labelled cells (every distinct positive score is a candidate).

    The threshold sits halfway between the lowest flagged score and the next one down, so that a new cell scoring
    like the training cells on the boundary is decided the same way. `smooth` > 0: the threshold of best F1 once
    the F1 curve is averaged over a Gaussian window of that width in log score: where the training F1 curve is flat
    its exact maximum is chance (a few cells move it from 5 to 10), the middle of the good region is not.
    """
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos = scores > 0
    if not pos.any():
        return float("inf")
    if smooth > 0:
        return _smoothed_best_threshold(scores[pos], labels[pos], int(labels.sum()), smooth)
    order = np.argsort(-scores[pos], kind="stable")
    s, y = scores[pos][order], labels[pos][order]
    last = np.r_[s[1:] != s[:-1], True]  # flag every cell scoring >= s[i]: ties go together
    tp = np.cumsum(y)[last]
    flagged = np.arange(1, len(s) + 1)[last]
    f1 = 2 * tp / (flagged + labels.sum())
    i = int(np.argmax(f1))
    distinct = s[last]
    below = distinct[i + 1] if i + 1 < len(distinct) else 0.0
    return float(0.5 * (distinct[i] + below))


def _smoothed_best_threshold(s: np.ndarray, y: np.ndarray, n_pos: int, width: float) -> float:
    """`best_threshold` on the F1 curve smoothed over `width` in log score (a grid of 50 steps per width)."""
    lo, hi = np.log(max(float(s.min()), 1e-3)), np.log(float(s.max()))
    step = width / 50
    grid = np.exp(np.arange(lo, hi + step, step))
    srt = np.sort(s)
    flagged = len(s) - np.searchsorted(srt, grid, side="left")
    tp = np.sum(y) - np.searchsorted(np.sort(s[y]), grid, side="left")
    f1 = 2 * tp / np.maximum(flagged + n_pos, 1)
    k = np.exp(-0.5 * (np.arange(-150, 151) / 50.0) ** 2)  # +-3 widths
    smooth = np.convolve(f1, k, "same") / np.convolve(np.ones_like(f1), k, "same")
    return float(grid[int(np.argmax(smooth))])


def read_feedback(path) -> pd.DataFrame:
    """Users' verdicts on anomalies (FEEDBACK_COLUMNS); a malformed file is a clear error naming it."""
    from finops_ml.errors import FinopsError

    try:
        feedback = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise FinopsError(f"Anomaly feedback {path} cannot be read as CSV ({exc.__class__.__name__}).") from None
    missing = [c for c in ("day", "service", "project_id", "verdict") if c not in feedback.columns]
    if missing:
        raise FinopsError(f"Anomaly feedback {path} lacks the column(s) {', '.join(missing)}; "
                          f"expected {','.join(FEEDBACK_COLUMNS)}.")
    bad = feedback[~feedback.verdict.isin(VERDICTS)]
    if len(bad):
        raise FinopsError(f"Anomaly feedback {path}, line {bad.index[0] + 2}: verdict {bad.verdict.iloc[0]!r} is not "
                          f"one of {', '.join(VERDICTS)}.")
    return feedback


def labels_with_feedback(truth: pd.DataFrame | None, feedback: pd.DataFrame | None) -> pd.DataFrame | None:
    """Training labels: the ground truth where there is one; a cell marked `expected` is not an anomaly (a planned
    migration, a known batch job), a cell marked `unexpected` is one. The latest verdict on a cell wins."""
    if feedback is None or feedback.empty:
        return truth
    marks = feedback.drop_duplicates(["day", "service", "project_id"], keep="last")
    marks = pd.DataFrame({"date": pd.to_datetime(marks.day).dt.date.astype(str), "service": marks.service,
                          "project_id": marks.project_id, "material": marks.verdict == "unexpected"})
    if truth is None:
        return marks.reset_index(drop=True)
    truth = truth.assign(date=pd.to_datetime(truth.date).dt.date.astype(str))
    keys = ["date", "service", "project_id"]
    kept = truth.merge(marks[keys], on=keys, how="left", indicator=True)
    kept = kept[kept["_merge"] == "left_only"].drop(columns="_merge")
    return pd.concat([kept, marks], ignore_index=True)


def _holdout_split(daily: pd.DataFrame, holdout_months: int) -> pd.Timestamp:
    cutoff = daily.day.max() - pd.DateOffset(months=holdout_months)
    return cutoff + pd.offsets.MonthEnd(0)


def _truth_metrics(test: pd.DataFrame) -> dict:
    """Cell-wise and event-wise scores of the holdout's decisions against its labels (`truth`)."""
    precision, recall, f1 = precision_recall_f1(test.truth, test.is_anomaly)
    return {"f1": f1, "precision": precision, "recall": recall, "cells": int(len(test)),
            "anomalous_cells": int(test.truth.sum()), "flagged_cells": int(test.is_anomaly.sum()),
            "confusion": [[int((~test.truth & ~test.is_anomaly).sum()), int((~test.truth & test.is_anomaly).sum())],
                          [int((test.truth & ~test.is_anomaly).sum()), int((test.truth & test.is_anomaly).sum())]],
            **event_metrics(test.assign(predicted=test.is_anomaly)[["day", "service", "project_id", "truth",
                                                                    "predicted"]])}


def _feedback_metrics(test: pd.DataFrame, feedback: pd.DataFrame | None) -> dict | None:
    """How the holdout's decisions agree with the verdicts on its cells (None without a verdict there)."""
    marks = _feedback_marks(test, feedback)
    if marks is None or marks.isna().all():
        return None
    marked = test[marks.notna()].assign(truth=marks[marks.notna()].astype(bool))
    precision, recall, f1 = precision_recall_f1(marked.truth, marked.is_anomaly)
    return {"f1": f1, "precision": precision, "recall": recall, "marked_cells": int(len(marked)),
            "unexpected": int(marked.truth.sum())}


def _injected_confusion(injected: dict) -> list[list[int]]:
    """normal / anomaly x not flagged / flagged over the cells of every draw (don't-care cells left out)."""
    tp = fp = fn = tn = 0
    for d in injected["per_draw"]:
        hits = int(round(np.nan_to_num(d["recall"]) * d["positive_cells"]))
        tp, fn = tp + hits, fn + d["positive_cells"] - hits
        fp += d["flagged_cells"] - hits
        tn += d["cells"] - d["positive_cells"] - (d["flagged_cells"] - hits)
    return [[tn, fp], [fn, tp]]


def train_and_evaluate(daily: pd.DataFrame, truth: pd.DataFrame | None, holdout_months: int = 3, window_days: int = 28,
                       n_estimators: int = 200, seed: int = 42, resources: pd.DataFrame | None = None, *,
                       feedback: pd.DataFrame | None = None, detector: CostAnomalyDetector | None = None,
                       injection: dict | None = None, refit: bool = True) -> dict:
    """Fit on the training window, evaluate on the last `holdout_months` months, refit on everything (`refit`
    false: the metrics only, "model" None, as when a champion is re-scored).

    `detector` (unfitted) carries the settings (default: one with `window_days`); its thresholds come from the alarm
    budgets, refined by `feedback` verdicts, or from `truth` (synthetic data: the generator's labels, corrected by the
    verdicts). The evaluation always injects labelled anomalies into copies of the holdout (`injection`: keyword
    arguments of `anomaly_eval.evaluate_by_injection`), and scores the holdout against the truth and the verdicts
    where there are some. `anomaly_f1` is the ground truth's F1 when there is one, else the injected F1.
    """
    proto = detector if detector is not None else CostAnomalyDetector(window_days, n_estimators, seed)
    daily = daily.assign(day=pd.to_datetime(daily["day"]))
    if daily.empty:
        raise InsufficientData("The anomaly detector got no daily cost; it needs a billing export with daily costs.")
    cutoff = _holdout_split(daily, holdout_months)
    train = daily[daily.day <= cutoff]
    train_days = (cutoff - daily.day.min()).days + 1
    needed = proto.warmup_days + 2 * proto.baseline_days
    if train_days < needed:
        span = (daily.day.max() - daily.day.min()).days + 1
        raise InsufficientData(f"The anomaly detector needs {needed} days of history before its {holdout_months}-"
                               f"month holdout (about {needed + 30 * holdout_months} days in all); the data spans "
                               f"{span} days.")
    labels = labels_with_feedback(truth, feedback) if truth is not None else None
    model = replace(proto).fit(train, labels, feedback)
    cells = model.score(daily, resources)  # features are causal: scoring all days never leaks the future
    if not cells[cells.day <= cutoff].judged.any():
        raise InsufficientData(f"The anomaly detector found no resource with {proto.warmup_days} days of steady "
                               "history in the training window; it needs resources billed daily for that long.")
    cells["truth"] = label_cells(cells, labels) if labels is not None else False
    test = cells[cells.day > cutoff]
    ground_truth = _truth_metrics(test) if truth is not None else None
    if ground_truth is not None:
        ground_truth["train_f1"] = precision_recall_f1(cells[cells.day <= cutoff].truth,
                                                       cells[cells.day <= cutoff].is_anomaly)[2]
    from finops_ml.models.anomaly_eval import evaluate_by_injection

    # Cells known to be anomalous (truth, verdicts) are no false alarm of the injected evaluation.
    known = labels_with_feedback(truth, feedback)
    known = known[known.material.astype(bool)] if known is not None else None
    injected = evaluate_by_injection(model, train, daily[daily.day > cutoff], resources, known=known,
                                     **(injection or {}))
    injected["recall_by_kind"] = injected["recall_per_kind"]  # the name summary.json readers know
    used = "ground_truth" if ground_truth is not None else "injected"
    main = ground_truth if ground_truth is not None else injected
    metrics = {
        "anomaly_f1": main["f1"], "precision": main["precision"], "recall": main["recall"],
        "evaluation": {"used": used, "injected": injected, "ground_truth": ground_truth,
                       "feedback": _feedback_metrics(test, feedback)},
        "threshold": model.threshold_up_, "threshold_up": model.threshold_up_, "threshold_down": model.threshold_down_,
        "threshold_source_up": model.calibration_["up"]["source"],
        "threshold_source_down": model.calibration_["down"]["source"],
        "holdout_cells": int(len(test)), "flagged_cells": int(test.is_anomaly.sum()),
        "holdout_alarm_rate": float(test.is_anomaly.mean()) if len(test) else 0.0,
        "confusion": main["confusion"] if "confusion" in main else _injected_confusion(injected),
        **{k: main[k] for k in ("event_precision", "event_recall", "event_f1", "mean_detection_delay_days")},
        "holdout_start": str((cutoff + pd.Timedelta(days=1)).date()), "train_end": str(cutoff.date()),
    }
    final = replace(proto).fit(daily, labels, feedback) if refit else None
    return {"metrics": metrics, "model": final, "cells": cells}

"""Cost anomaly detection on daily cells (day x service x project).

A cell's expected cost is built bottom-up from its resources (the daily cost per resource of the
resource_daily_cost view; given daily cost per cell only, a cell is one resource):

- each resource has weekday and month-end factors and a noise scale learnt in `fit` (a resource the fit never saw
  borrows its service's);
- an established resource's expected cost is the median of its last `baseline_days` *accepted* de-seasonalised
  days times today's season. A day is accepted into the baseline only when it lies within `reject_sigmas` noise
  scales of it, so a level shift or a drift in progress does not leak into the baseline that judges it; a change
  that persists for `accept_after_days` is accepted as the new normal (the baseline restarts from recent days);
- a resource younger than `warmup_days` is new spend (it ramps up): its cost is its own expectation, reported but
  not an anomaly.

Everything is causal (a recursive filter over days: a cell only sees its past, with factors fixed in `fit`), so
the same detector can run event by event. The cell's robust statistics (the log ratio of its cost to the bottom-up
expectation, its 3-day mean, and a robust z of the excess from the resources' noise scales) are the features of an
Isolation Forest fitted on the training cells. The final score of a rise of established spend is the forest's
anomaly score times the log ratio (the forest saturates beyond its training data; the size of the rise orders
those cells), and the decision threshold is the one that maximises F1 against the labelled anomalies of the
training window. It is never tuned on the holdout.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest

from finops_ml.models.metrics import event_metrics, precision_recall_f1

FEATURES = ["robust_z", "log_ratio", "log_ratio_3d"]
SKU_EWMA_ALPHA = 0.2  # a SKU's usual daily cost: EWMA over its resource's days (a SKU absent that day adds 0)
CAUSE_LABELS = ["owner", "cost_center", "plant"]
ANOMALY_COLUMNS = ["anomaly_id", "day", "service", "project_id", "net_cost", "expected", "impact", "score",
                   "cause_resource", "cause_sku", "cause_share", *(f"cause_{c}" for c in CAUSE_LABELS)]
CELL_COLUMNS = [*ANOMALY_COLUMNS, "is_anomaly", "truth"]
FEEDBACK_COLUMNS = ["anomaly_id", "day", "service", "project_id", "verdict", "note", "marked_at"]
VERDICTS = ("expected", "unexpected")
KEYS = ["service", "project_id"]
RESOURCE_KEYS = ["service", "project_id", "resource"]
MIN_BASELINE_DAYS = 5


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


def _learn_factors(panel: ResourcePanel, warmup_days: int) -> pd.DataFrame:
    """Weekday factors, month-end factor and noise scale (log space) of each resource, robustly, from its history."""
    x = pd.DataFrame(panel.cost.T)  # days x resources
    weekday = np.asarray(panel.days.dayofweek)
    month_end = _month_end(panel.days)
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
        level = pd.DataFrame(np.where(month_end[:, None], np.nan, flat)).rolling(15, center=True,
                                                                                  min_periods=5).median()
        level = level.to_numpy()
        me_ratio = (flat / level)[month_end]
        me = np.where(np.sum(np.isfinite(me_ratio), axis=0) >= 3, np.nanmedian(me_ratio, axis=0), np.nan)
        # Noise: log residual around the centred level, once the resource has settled.
        age = np.arange(x.shape[0])[:, None] - np.argmax(np.isfinite(x.to_numpy()), axis=0)[None, :]
        expected = level * np.where(month_end[:, None], np.nan_to_num(me, nan=1.0), 1.0)
        resid = np.log((flat + 1.0) / (expected + 1.0))
        resid[(age < warmup_days) | month_end[:, None]] = np.nan
        enough = np.sum(np.isfinite(resid), axis=0) >= 20
        med = np.nanmedian(resid[:, enough], axis=0)
        sigma = np.full(x.shape[1], np.nan)
        sigma[enough] = 1.4826 * np.nanmedian(np.abs(resid[:, enough] - med), axis=0)
    out = panel.resources.copy()
    for w in range(7):
        out[f"dow{w}"] = dow[:, w]
    out["month_end"] = me
    out["sigma"] = sigma
    return out


def _fill_factors(factors: pd.DataFrame, resources: pd.DataFrame) -> pd.DataFrame:
    """Factors for `resources`: their own where learnt, else their service's median, else neutral."""
    cols = [f"dow{w}" for w in range(7)] + ["month_end", "sigma"]
    own = resources.merge(factors, on=RESOURCE_KEYS, how="left")
    by_service = factors.groupby("service")[cols].median()
    svc = by_service.reindex(own["service"]).reset_index(drop=True)
    neutral = {**{f"dow{w}": 1.0 for w in range(7)}, "month_end": 1.0,
               "sigma": float(np.nanmedian(factors["sigma"])) if factors["sigma"].notna().any() else 0.05}
    for c in cols:
        own[c] = own[c].fillna(svc[c]).fillna(neutral[c])
    own[[f"dow{w}" for w in range(7)]] = own[[f"dow{w}" for w in range(7)]].clip(0.2, 3.0)
    own["month_end"] = own["month_end"].clip(0.5, 5.0)
    own["sigma"] = own["sigma"].clip(0.01, 1.0)
    return own


def _robust_baseline(flat: np.ndarray, sigma: np.ndarray, baseline_days: int, warmup_days: int,
                     reject_sigmas: float, accept_after_days: int) -> tuple[np.ndarray, np.ndarray]:
    """Causal outlier-rejecting baseline of de-seasonalised costs (resources x days).

    Returns the baseline (NaN where the resource is absent or not established yet) and whether each day was
    established. Day t's baseline is the median of the last `baseline_days` accepted values before t.
    """
    n_res, n_days = flat.shape
    accepted = np.full((n_res, baseline_days), np.nan)
    recent = np.full((n_res, baseline_days), np.nan)
    pos_acc = np.zeros(n_res, int)
    pos_rec = np.zeros(n_res, int)
    rejected_run = np.zeros(n_res, int)
    age = np.full(n_res, -1)
    base_out = np.full((n_res, n_days), np.nan)
    established_out = np.zeros((n_res, n_days), bool)
    rows = np.arange(n_res)
    for t in range(n_days):
        x = flat[:, t]
        present = np.isfinite(x)
        age = np.where(age >= 0, age + 1, np.where(present, 0, -1))
        n_acc = np.sum(np.isfinite(accepted), axis=1)
        srt = np.sort(accepted, axis=1)  # NaN last
        lo_idx = np.maximum((n_acc - 1) // 2, 0)
        hi_idx = np.maximum(n_acc // 2, 0)
        base = 0.5 * (srt[rows, lo_idx] + srt[rows, hi_idx])
        base = np.where(n_acc >= MIN_BASELINE_DAYS, base, np.nan)
        established = present & (age >= warmup_days) & np.isfinite(base)
        base_out[:, t] = np.where(present, base, np.nan)
        established_out[:, t] = established
        dev = np.abs(np.log((np.maximum(x, 0.0) + 1.0) / (np.maximum(base, 0.0) + 1.0)))
        ok = present & (~established | (dev <= reject_sigmas * sigma))
        rejected_run = np.where(present & ~ok, rejected_run + 1, np.where(ok, 0, rejected_run))
        # record every observed value; accept the normal ones
        recent[rows[present], pos_rec[present]] = x[present]
        pos_rec = np.where(present, (pos_rec + 1) % baseline_days, pos_rec)
        accepted[rows[ok], pos_acc[ok]] = x[ok]
        pos_acc = np.where(ok, (pos_acc + 1) % baseline_days, pos_acc)
        # A change that has lasted `accept_after_days` is the new normal: restart from the recent days.
        reset = rejected_run >= accept_after_days
        if reset.any():
            accepted[reset] = recent[reset]
            pos_acc[reset] = pos_rec[reset]
            rejected_run[reset] = 0
    return base_out, established_out


def cell_costs(daily: pd.DataFrame) -> pd.DataFrame:
    """Daily cost per cell (day, service, project_id, net_cost) from cost per resource, or as it is."""
    if "resource_name" not in daily.columns:
        return daily
    return daily.groupby(["day", *KEYS], as_index=False, sort=True)["net_cost"].sum()


@dataclass
class CostAnomalyDetector:
    window_days: int = 28  # a resource's history window: its warm-up, and (half of it) its baseline
    n_estimators: int = 200
    seed: int = 42
    reject_sigmas: float = 3.0
    accept_after_days: int = 28
    threshold_: float = float("nan")
    forest_: IsolationForest | None = None
    factors_: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def warmup_days(self) -> int:
        """A new resource ramps up: it is new spend, not judged, until it has a window of history and a week."""
        return self.window_days + 7

    @property
    def baseline_days(self) -> int:
        """The baseline is the median of this many accepted days (all of them after the warm-up's ramp)."""
        return max(self.window_days // 2, MIN_BASELINE_DAYS)

    def features(self, daily: pd.DataFrame) -> pd.DataFrame:
        """Per-cell expected cost and features from each resource's own past (causal)."""
        daily = daily.assign(day=pd.to_datetime(daily["day"]))
        panel = ResourcePanel.from_daily(daily)
        daily = cell_costs(daily)
        if self.factors_ is None:
            raise ValueError("CostAnomalyDetector.features needs a fitted detector: call fit first.")
        factors = _fill_factors(self.factors_, panel.resources)
        weekday = np.asarray(panel.days.dayofweek)
        dow = factors[[f"dow{w}" for w in range(7)]].to_numpy()
        season = dow[:, weekday] * np.where(_month_end(panel.days)[None, :], factors["month_end"].to_numpy()[:, None],
                                            1.0)
        x = panel.cost
        sigma = factors["sigma"].to_numpy()
        base, established = _robust_baseline(x / season, sigma, self.baseline_days, self.warmup_days,
                                              self.reject_sigmas, self.accept_after_days)
        expected_r = np.where(established, base * season, x)  # new resources explain themselves
        excess_r = np.where(established, x - expected_r, 0.0)
        var_r = np.where(established, (sigma[:, None] * (expected_r + 1.0)) ** 2, 0.0)
        new_r = np.where(present := np.isfinite(x), np.where(established, 0.0, x), 0.0)

        # Resources -> cells
        cell_keys = daily[KEYS].drop_duplicates().reset_index(drop=True)
        cell_of_res = pd.MultiIndex.from_frame(cell_keys).get_indexer(pd.MultiIndex.from_frame(panel.resources[KEYS]))
        n_cells, n_days = len(cell_keys), len(panel.days)

        def to_cells(m: np.ndarray) -> np.ndarray:
            out = np.zeros((n_cells, n_days))
            np.add.at(out, cell_of_res, np.where(present, m, 0.0))
            return out

        actual_c = to_cells(np.nan_to_num(x))
        expected_c, excess_c, var_c, new_c = (to_cells(expected_r), to_cells(excess_r), to_cells(var_r),
                                              to_cells(new_r))
        log_ratio = np.log((np.maximum(expected_c + excess_c, 0.0) + 1.0) / (np.maximum(expected_c, 0.0) + 1.0))
        z = np.clip(excess_c / np.sqrt(var_c + 1.0), -50, 50)
        lr = pd.DataFrame(log_ratio.T)
        log_ratio_3d = lr.rolling(3, min_periods=1).mean().to_numpy().T

        # The cause: the established resource of the cell whose cost rose most above its own expectation.
        ranked = np.where(established & present, np.nan_to_num(x) - expected_r, -np.inf)
        top = np.full((n_cells, n_days), -1)
        top_excess = np.zeros((n_cells, n_days))
        for c in range(n_cells):
            rows = np.flatnonzero(cell_of_res == c)
            best = rows[np.argmax(ranked[rows], axis=0)]
            ok = np.isfinite(ranked[best, np.arange(n_days)])
            top[c] = np.where(ok, best, -1)
            top_excess[c] = np.where(ok, ranked[best, np.arange(n_days)], 0.0)

        c_idx = pd.MultiIndex.from_frame(cell_keys).get_indexer(pd.MultiIndex.from_frame(daily[KEYS]))
        t_idx = ((daily["day"] - panel.days[0]) // pd.Timedelta(days=1)).to_numpy()
        top_cell = top[c_idx, t_idx]
        names = panel.resources["resource"].to_numpy(object)
        cells = daily.assign(
            cause_resource=np.where(top_cell >= 0, names[np.maximum(top_cell, 0)], None),
            cause_excess=top_excess[c_idx, t_idx],
            expected=expected_c[c_idx, t_idx],
            established_cost=actual_c[c_idx, t_idx] - new_c[c_idx, t_idx],
            new_cost=new_c[c_idx, t_idx],
            excess=excess_c[c_idx, t_idx],
            robust_z=z[c_idx, t_idx],
            log_ratio=log_ratio[c_idx, t_idx],
            log_ratio_3d=log_ratio_3d[c_idx, t_idx],
        )
        return cells.sort_values([*KEYS, "day"]).reset_index(drop=True)

    def fit(self, daily: pd.DataFrame, truth: pd.DataFrame | None = None) -> "CostAnomalyDetector":
        """Learn resource factors and the forest on the training cells; pick the threshold with the labels."""
        daily = daily.assign(day=pd.to_datetime(daily["day"]))
        self.factors_ = _learn_factors(ResourcePanel.from_daily(daily), self.warmup_days)
        cells = self.features(daily)
        judged = cells[cells.established_cost > 0]
        judged = judged if len(judged) else cells
        self.forest_ = IsolationForest(n_estimators=self.n_estimators, random_state=self.seed, n_jobs=1)
        self.forest_.fit(judged[FEATURES].to_numpy())
        scores = self._score(cells)
        if truth is None:
            self.threshold_ = float(np.quantile(scores, 0.98))
            return self
        labels = label_cells(cells, truth)
        # Without a labelled anomaly in the training window, flag the top 2% as without labels.
        self.threshold_ = best_threshold(scores, labels) if labels.any() else float(np.quantile(scores, 0.98))
        return self

    def _score(self, cells: pd.DataFrame) -> np.ndarray:
        """The forest's anomaly score of a cell, scaled by the size of its rise (log of actual over expected).

        The forest says how unusual the cell's robust statistics are among the training cells; its score saturates
        for everything beyond the training data, so the size of the rise orders the clearly unusual cells. Only
        increases of established spend count.
        """
        raw = -self.forest_.score_samples(cells[FEATURES].to_numpy())
        rise = (cells.log_ratio > 0) & (cells.established_cost > 0)
        return np.where(rise, raw * cells.log_ratio, 0.0)

    def score(self, daily: pd.DataFrame, resources: pd.DataFrame | None = None) -> pd.DataFrame:
        """Score every cell; an anomalous one gets its dollar impact (actual - expected) and its cause: the
        resource, its SKU (when `daily` has a `sku` column) and labels (from the `resources` view when given)."""
        cells = self.features(daily)
        cells["score"] = self._score(cells)
        cells["is_anomaly"] = cells.score >= self.threshold_
        cells["impact"] = np.where(cells.is_anomaly, cells.net_cost - cells.expected, 0.0)
        cells["anomaly_id"] = [anomaly_id(str(d.date()), s, p) if a else None
                               for d, s, p, a in zip(cells.day, cells.service, cells.project_id, cells.is_anomaly)]
        return explain(cells, daily, resources)


def explain(cells: pd.DataFrame, daily: pd.DataFrame, resources: pd.DataFrame | None = None) -> pd.DataFrame:
    """Name the cause of each anomalous cell: its top resource's share of the cell's excess, the resource's SKU
    that rose most above its usual daily cost (EWMA over the resource's earlier days), and the resource's labels."""
    cells = cells.copy()
    flagged = cells.is_anomaly & cells.cause_resource.notna()
    excess = cells.net_cost - cells.expected
    cells["cause_share"] = np.where(flagged & (excess > 0), cells.cause_excess / excess.where(excess > 0), np.nan)
    cells["cause_sku"] = None
    for c in CAUSE_LABELS:
        cells[f"cause_{c}"] = None
    cells.loc[~flagged, "cause_resource"] = None
    if not flagged.any():
        return cells
    if "sku" in daily.columns and "resource_name" in daily.columns:
        day = pd.to_datetime(daily["day"])
        wanted = cells.loc[flagged, ["service", "project_id", "cause_resource"]].drop_duplicates()
        rows = daily.assign(day=day).merge(wanted.rename(columns={"cause_resource": "resource_name"}),
                                           on=["service", "project_id", "resource_name"])
        per_resource = {k: g.pivot_table(index="day", columns="sku", values="net_cost", aggfunc="sum", fill_value=0.0)
                        for k, g in rows.groupby(["service", "project_id", "resource_name"])}
        skus = []
        for i in np.flatnonzero(flagged):
            row = cells.iloc[i]
            table = per_resource.get((row.service, row.project_id, row.cause_resource))
            skus.append(_top_sku(table, row.day) if table is not None else None)
        cells.loc[flagged, "cause_sku"] = skus
    if resources is not None and "resource_name" in resources.columns:
        labels = resources.drop_duplicates(["project_id", "resource_name"]).set_index(["project_id", "resource_name"])
        keys = pd.MultiIndex.from_arrays([cells.loc[flagged, "project_id"], cells.loc[flagged, "cause_resource"]])
        for c in CAUSE_LABELS:
            if c in labels.columns:
                cells.loc[flagged, f"cause_{c}"] = labels[c].reindex(keys).to_numpy()
    return cells


def _top_sku(table: pd.DataFrame, day) -> str | None:
    """The SKU whose cost on `day` rose most above its EWMA over the resource's earlier days."""
    if day not in table.index:
        return None
    before = table[table.index < day]
    usual = np.zeros(table.shape[1])
    for values in before.to_numpy():
        usual = (1 - SKU_EWMA_ALPHA) * usual + SKU_EWMA_ALPHA * values
    return str(table.columns[int(np.argmax(table.loc[day].to_numpy() - usual))])


def label_cells(cells: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    """Ground truth per cell: True where a material injected anomaly touched it."""
    material = truth[truth.material].assign(day=lambda t: pd.to_datetime(t.date))
    marks = set(zip(material.day, material.service, material.project_id))
    return np.fromiter(((d, s, p) in marks for d, s, p in zip(cells.day, cells.service, cells.project_id)),
                       bool, len(cells))


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The score threshold with the best F1 on labelled cells (every distinct positive score is a candidate).

    The threshold sits halfway between the lowest flagged score and the next one down, so that a new cell scoring
    like the training cells on the boundary is decided the same way.
    """
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos = scores > 0
    if not pos.any():
        return float("inf")
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


def train_and_evaluate(daily: pd.DataFrame, truth: pd.DataFrame | None, holdout_months: int, window_days: int,
                       n_estimators: int, seed: int, resources: pd.DataFrame | None = None) -> dict:
    """Fit on the training window (threshold from its labels), evaluate on the last months.

    Without labelled anomalies (no ground truth, no feedback yet) the detector still trains, flagging its top 2%,
    but precision, recall and F1 are NaN: nothing can be measured, so the gate cannot pass.
    """
    if truth is None:
        truth = pd.DataFrame({"date": pd.Series(dtype=str), "service": pd.Series(dtype=str),
                              "project_id": pd.Series(dtype=str), "material": pd.Series(dtype=bool)})
    daily = daily.assign(day=pd.to_datetime(daily["day"]))
    cutoff = daily.day.max() - pd.DateOffset(months=holdout_months)
    cutoff = cutoff + pd.offsets.MonthEnd(0)
    train = daily[daily.day <= cutoff]
    detector = CostAnomalyDetector(window_days, n_estimators, seed).fit(train, truth)
    cells = detector.score(daily, resources)  # features are causal: scoring all days never leaks the future
    cells["truth"] = label_cells(cells, truth)
    cells["predicted"] = cells.is_anomaly
    test = cells[cells.day > cutoff]
    train_cells = cells[cells.day <= cutoff]
    precision, recall, f1 = precision_recall_f1(test.truth, test.predicted)
    if not truth["material"].any():
        precision = recall = f1 = float("nan")
    _, _, train_f1 = precision_recall_f1(train_cells.truth, train_cells.predicted)
    metrics = {
        "anomaly_f1": f1, "precision": precision, "recall": recall, "train_f1": train_f1,
        "threshold": detector.threshold_, "holdout_cells": int(len(test)),
        "holdout_anomalous_cells": int(test.truth.sum()), "flagged_cells": int(test.predicted.sum()),
        "confusion": [[int((~test.truth & ~test.predicted).sum()), int((~test.truth & test.predicted).sum())],
                      [int((test.truth & ~test.predicted).sum()), int((test.truth & test.predicted).sum())]],
        **event_metrics(test[["day", "service", "project_id", "truth", "predicted"]]),
        "holdout_start": str((cutoff + pd.Timedelta(days=1)).date()), "train_end": str(cutoff.date()),
    }
    final = CostAnomalyDetector(window_days, n_estimators, seed).fit(daily, truth)
    return {"metrics": metrics, "model": final, "cells": cells}

"""Labelled cost anomalies injected into a copy of a cost table: the one way this project makes an anomaly.

The generator makes its anomalies with it, and the anomaly gate is measured with it on any export: anomalies of
known kinds are injected into a copy of the holdout window of the data being trained on (finops_ml.models.
anomaly_eval), so a detector can be scored where no ground truth exists.

The table is daily cost per resource (and SKU): the resource_daily_cost view (day, service, project_id,
resource_name, sku, net_cost), held as a `CostPanel` (series x days, NaN where a series bills nothing).
`inject_events` wraps it for an events table (line items) when the events themselves are wanted.

Kinds (direction): spike (up, 1-3 days), level_shift (up, 1-3 weeks, some persist as the new normal), drift (up,
2-5% a day compounding), drop (down, 80-100% of an always-on resource: outage, deleted resource, broken export),
new_resource (up, a runaway resource that did not exist), spread (up, +20-60% on every resource of one service in
one project: a price change, a misconfigured autoscaler), new_sku (up, a resource starts billing a new SKU).

Each anomaly is sized against the affected resource's own cost and day-to-day variability: a spike, a level shift
or a new SKU multiplies the resource's cost by exp(k * sigma), with sigma its robust log-sigma (from same-weekday
differences of its history before the anomaly) and k log-uniform in `InjectionSpec.sigma_multiple`; drifts, drops
and spread rises are relative to the resource's own cost by definition; a runaway resource starts at a multiple of
the cost of a resource of its cell and grows. Never against the whole cell.

Truth, in the shape of the generator's truth/: one record per anomaly (ANOMALY_COLUMNS: kind, direction, window,
resources, size, $ impact) and one row per day of its labelled window (CELL_COLUMNS: the cell's injected $ change,
its expected (clean) cost, and `material`: the change is at least `material_share` of the cell's expected cost AND
at least `min_impact_usd`). A persisting level shift is labelled over its window only: after it, the new level is
the new normal. Every draw comes from the numpy Generator passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from finops_ml.errors import FinopsError
from finops_ml.synthetic.org import NEW_SKUS

KINDS = ("spike", "level_shift", "drift", "drop", "new_resource", "spread", "new_sku")
DIRECTION = {k: ("down" if k == "drop" else "up") for k in KINDS}
SERIES_KEYS = ["service", "project_id", "resource_name", "sku"]
RESOURCE_KEYS = ["service", "project_id", "resource_name"]
CELL_KEYS = ["service", "project_id"]
ANOMALY_COLUMNS = ["anomaly_id", "kind", "direction", "service", "project_id", "resource", "sku", "start", "end",
                   "persists", "sigma", "sigma_multiple", "size", "injected_cost"]
CELL_COLUMNS = ["date", "service", "project_id", "anomaly_id", "kind", "direction", "injected_cost",
                "expected_cost", "material"]
# New SKUs a resource may start billing (kind new_sku): the catalogue's expensive ones, as in a real surprise.
NEW_SKU_NAMES = tuple(s.description for s in NEW_SKUS)


@dataclass
class InjectionSpec:
    """What the injector draws from. Ranges are (low, high); lengths in days, inclusive."""

    kinds: dict[str, float] = field(default_factory=lambda: {k: 1.0 for k in KINDS})  # relative frequency
    sigma_multiple: tuple[float, float] = (3.0, 30.0)  # k, log-uniform: log size = k * the resource's log-sigma
    max_factor: float = 8.0  # a spike / shift / new SKU at most multiplies the resource's cost by this
    min_sigma: float = 0.02  # floor of a resource's log-sigma (a flat resource still gets a visible change)
    spike_days: tuple[int, int] = (1, 3)
    shift_days: tuple[int, int] = (7, 21)
    shift_persist_share: float = 0.3  # level shifts that stay (the labelled window is the first weeks)
    drift_days: tuple[int, int] = (10, 25)
    drift_rate: tuple[float, float] = (0.02, 0.05)  # per day, compounding
    drop_days: tuple[int, int] = (1, 14)
    drop_fraction: tuple[float, float] = (0.8, 0.99)
    drop_complete_share: float = 0.4  # drops where the resource stops billing altogether (its rows vanish)
    new_resource_days: tuple[int, int] = (3, 14)
    new_resource_level: tuple[float, float] = (0.3, 3.0)  # first day's cost / a resource of the cell, log-uniform
    new_resource_growth: tuple[float, float] = (0.05, 0.3)  # per day, compounding: it runs away
    spread_days: tuple[int, int] = (3, 14)
    spread_rise: tuple[float, float] = (0.2, 0.6)
    new_sku_days: tuple[int, int] = (3, 10)
    new_skus: tuple[str, ...] = NEW_SKU_NAMES
    material_share: float = 0.25  # a labelled day's change is material at this share of the cell's expected cost
    min_impact_usd: float = 0.0  # ... and at least this many dollars
    min_history_days: int = 45  # a resource's own history before its anomaly (its cost and variability)
    min_presence: float = 0.9  # share of those days (and the window) it must bill: always-on
    gap_days: int = 14  # quiet days between two anomalies of one cell, so that each has its own truth
    max_tries: int = 60  # placements tried per anomaly before it is skipped

    def __post_init__(self):
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            raise FinopsError(f"Unknown anomaly kind(s) {unknown}; use some of {', '.join(KINDS)}.")
        if not any(w > 0 for w in self.kinds.values()):
            raise FinopsError("The injection spec needs at least one anomaly kind with a positive weight.")
        lo, hi = self.sigma_multiple
        if not 0 < lo <= hi:
            raise FinopsError(f"sigma_multiple must be 0 < low <= high, got {self.sigma_multiple}.")


@dataclass
class CostPanel:
    """Daily cost per series (resource x SKU) as a matrix: series x days, NaN where a series bills nothing."""

    days: pd.DatetimeIndex
    keys: pd.DataFrame  # one row per series: service, project_id, resource_name, sku ('' where the table has none)
    cost: np.ndarray
    has_sku: bool = True

    @classmethod
    def from_daily(cls, daily: pd.DataFrame) -> "CostPanel":
        """From daily cost per resource (the resource_daily_cost view; `sku` and `resource_name` optional)."""
        missing = [c for c in ("day", "service", "project_id", "net_cost") if c not in daily.columns]
        if missing:
            raise FinopsError(f"The cost table lacks the column(s) {', '.join(missing)}; it needs day, service, "
                              "project_id, net_cost (and resource_name, sku when it has them).")
        if daily.empty:
            raise FinopsError("The cost table has no rows: there is nothing to inject anomalies into.")
        flat = pd.DataFrame({
            "service": daily["service"].astype(str).to_numpy(),
            "project_id": daily["project_id"].fillna("").astype(str).to_numpy(),
            "resource_name": (daily["resource_name"].fillna("").astype(str).to_numpy()
                              if "resource_name" in daily.columns else ""),
            "sku": daily["sku"].fillna("").astype(str).to_numpy() if "sku" in daily.columns else "",
            "day": pd.to_datetime(daily["day"]).dt.tz_localize(None).dt.normalize().to_numpy(),
            "cost": daily["net_cost"].astype(float).to_numpy(),
        })
        flat = flat.groupby([*SERIES_KEYS, "day"], sort=True, as_index=False)["cost"].sum()
        days = pd.date_range(flat["day"].min(), flat["day"].max(), freq="D")
        keys = flat[SERIES_KEYS].drop_duplicates().reset_index(drop=True)
        s_idx = pd.MultiIndex.from_frame(keys).get_indexer(pd.MultiIndex.from_frame(flat[SERIES_KEYS]))
        t_idx = ((flat["day"] - days[0]) // pd.Timedelta(days=1)).to_numpy()
        cost = np.full((len(keys), len(days)), np.nan)
        cost[s_idx, t_idx] = flat["cost"].to_numpy()
        return cls(days, keys, cost, "sku" in daily.columns)

    def to_daily(self) -> pd.DataFrame:
        """Back to the view's long format: one row per series and day it bills (no `sku` if the input had none)."""
        s_idx, t_idx = np.nonzero(np.isfinite(self.cost))
        out = self.keys.iloc[s_idx].reset_index(drop=True)
        out.insert(0, "day", self.days[t_idx])
        out["net_cost"] = self.cost[s_idx, t_idx]
        if not self.has_sku:
            out = out.drop(columns="sku").groupby(["day", *RESOURCE_KEYS], as_index=False, sort=False)["net_cost"].sum()
        return out.sort_values(["day", *RESOURCE_KEYS]).reset_index(drop=True)

    def cell_cost(self) -> tuple[pd.DataFrame, np.ndarray]:
        """The cells (service, project_id) and their daily cost (cells x days; 0 where nothing bills)."""
        cells = self.keys[CELL_KEYS].drop_duplicates().reset_index(drop=True)
        cell_of = pd.MultiIndex.from_frame(cells).get_indexer(pd.MultiIndex.from_frame(self.keys[CELL_KEYS]))
        out = np.zeros((len(cells), len(self.days)))
        np.add.at(out, cell_of, np.nan_to_num(self.cost))
        return cells, out


@dataclass
class Injection:
    """The outcome of `inject`: the panel with the anomalies and their truth."""

    clean: CostPanel
    panel: CostPanel  # the injected copy; added series (new SKUs, new resources) come after the clean ones
    template: np.ndarray  # per series of `panel`: the clean series it was copied from (itself when not added)
    anomalies: pd.DataFrame  # ANOMALY_COLUMNS
    cells: pd.DataFrame  # CELL_COLUMNS: one row per labelled day of each anomaly

    def daily(self) -> pd.DataFrame:
        return self.panel.to_daily()

    def cell_delta(self) -> pd.DataFrame:
        """Every cell-day the injection changed (labelled windows and persisting tails): day, service, project_id,
        delta (injected minus clean cost, USD)."""
        cells, clean = self.clean.cell_cost()
        cells2, dirty = self.panel.cell_cost()
        if len(cells2) != len(cells):  # an added series never opens a new cell; keep the orders aligned anyway
            dirty = _align(cells, cells2, dirty)
        delta = dirty - clean
        c_idx, t_idx = np.nonzero(np.abs(delta) > 1e-9)
        out = cells.iloc[c_idx].reset_index(drop=True)
        out.insert(0, "day", self.panel.days[t_idx])
        out["delta"] = delta[c_idx, t_idx]
        return out


def _align(cells: pd.DataFrame, other: pd.DataFrame, values: np.ndarray) -> np.ndarray:
    idx = pd.MultiIndex.from_frame(other).get_indexer(pd.MultiIndex.from_frame(cells))
    return values[idx]


def kind_sequence(rng: np.random.Generator, n: int, weights: dict[str, float]) -> list[str]:
    """`n` kinds in proportion to `weights` (largest remainders, so every kind with weight gets its share), shuffled."""
    kinds = [k for k in KINDS if weights.get(k, 0) > 0]
    w = np.array([weights[k] for k in kinds], float)
    exact = n * w / w.sum()
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    seq = [k for k, c in zip(kinds, counts) for _ in range(c)]
    return [seq[i] for i in rng.permutation(len(seq))]


def log_sigma(history: np.ndarray, min_sigma: float) -> float:
    """Robust log-sigma of a resource's daily cost: the MAD of its same-weekday log differences over sqrt(2)
    (NaN with fewer than 14 such pairs). Weekly seasonality cancels in the differences."""
    x = np.where(history > 0, history, np.nan)
    d = np.log(x[7:]) - np.log(x[:-7])
    d = d[np.isfinite(d)]
    if len(d) < 14:
        return float("nan")
    return max(min_sigma, float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2.0)))


class _Injector:
    """State of one injection: the panel, its resources and cells, which cell-days are taken."""

    SIGMA_DAYS = 56  # history used for a resource's level and log-sigma

    def __init__(self, panel: CostPanel, rng: np.random.Generator, spec: InjectionSpec, window: tuple[int, int]):
        self.p, self.rng, self.spec = panel, rng, spec
        self.lo, self.hi = window
        self.n_days = len(panel.days)
        self.clean = panel.cost
        self.cost = panel.cost.copy()
        keys = panel.keys
        self.res_of = keys.groupby(RESOURCE_KEYS, sort=False).ngroup().to_numpy()
        self.n_res = int(self.res_of.max()) + 1
        self.res_keys = keys[RESOURCE_KEYS].drop_duplicates().reset_index(drop=True)
        self.series_of = [np.flatnonzero(self.res_of == r) for r in range(self.n_res)]
        cells = keys[CELL_KEYS].drop_duplicates().reset_index(drop=True)
        self.cells = cells
        self.cell_of_res = pd.MultiIndex.from_frame(cells).get_indexer(
            pd.MultiIndex.from_frame(self.res_keys[CELL_KEYS]))
        self.res_of_cell = [np.flatnonzero(self.cell_of_res == c) for c in range(len(cells))]
        # A spread rise needs two resources in its cell, unless no cell has two (a table without resource names).
        self.spread_min = 2 if max(len(x) for x in self.res_of_cell) >= 2 else 1
        res_cost = np.zeros((self.n_res, self.n_days))
        np.add.at(res_cost, self.res_of, np.nan_to_num(self.clean))
        has = np.zeros((self.n_res, self.n_days), bool)
        np.logical_or.at(has, self.res_of, np.isfinite(self.clean))
        self.res_cost = np.where(has, res_cost, np.nan)
        self.present = has & (res_cost > 0)
        self.cum_present = np.concatenate([np.zeros((self.n_res, 1), int), np.cumsum(self.present, axis=1)], axis=1)
        _, self.cell_clean = panel.cell_cost()
        # A resource is picked with its share of its cell's cost: every cell about as often, big resources first.
        days_present = self.present.sum(axis=1)  # 0 for a resource that never bills (gone before it started)
        mean = np.divide(np.where(self.present, self.res_cost, 0.0).sum(axis=1), days_present,
                         out=np.zeros(self.n_res), where=days_present > 0)
        cell_total = np.zeros(len(cells))
        np.add.at(cell_total, self.cell_of_res, mean)
        of_cell = cell_total[self.cell_of_res]
        share = np.divide(mean, of_cell, out=np.zeros_like(mean), where=of_cell > 0)
        self.weight = share / share.sum() if share.sum() > 0 else None
        total = np.nansum(np.where(np.isfinite(self.clean), self.clean, 0.0), axis=1)
        self.main_series = np.array([s[np.argmax(total[s])] for s in self.series_of])
        self.busy = np.zeros((len(cells), self.n_days), bool)
        self.added_keys: list[dict] = []
        self.added_cost: list[np.ndarray] = []
        self.added_template: list[int] = []
        self.names = set(self.res_keys["resource_name"])
        self.records: list[dict] = []
        self.cell_rows: list[dict] = []

    # --- placement ------------------------------------------------------------------------------------------------

    def _length(self, span: tuple[int, int]) -> int | None:
        length = int(self.rng.integers(span[0], span[1] + 1))
        length = min(length, self.hi - self.lo)
        return length if length >= 1 else None

    def _start(self, length: int) -> int:
        return int(self.rng.integers(self.lo, self.hi - length + 1))

    def _resource(self) -> int | None:
        if self.weight is None:
            return None
        return int(self.rng.choice(self.n_res, p=self.weight))

    def _established(self, r: int, t0: int, length: int) -> bool:
        """Always-on: billing since `min_history_days` before t0 and on most days up to the window's end."""
        h = self.spec.min_history_days
        a, b = t0 - h, min(t0 + length, self.n_days)
        if a < 0 or not self.present[r, a] or not self.present[r, t0]:
            return False
        return (self.cum_present[r, b] - self.cum_present[r, a]) >= self.spec.min_presence * (b - a)

    def _free(self, cell: int, t0: int, end: int) -> bool:
        g = self.spec.gap_days
        return not self.busy[cell, max(0, t0 - g): min(self.n_days, end + g)].any()

    def _scale(self, r: int, t0: int) -> tuple[float, float]:
        """The resource's own level (median of its last 4 weeks) and log-sigma, from its history before t0."""
        hist = self.res_cost[r, max(0, t0 - self.SIGMA_DAYS): t0]
        recent = hist[-28:]
        recent = recent[np.isfinite(recent) & (recent > 0)]
        level = float(np.median(recent)) if len(recent) else float("nan")
        return level, log_sigma(hist, self.spec.min_sigma)

    def _sized_factor(self, sigma: float) -> tuple[float, float]:
        lo, hi = self.spec.sigma_multiple
        k = float(math.exp(self.rng.uniform(math.log(lo), math.log(hi))))
        return k, float(min(math.exp(k * sigma), self.spec.max_factor))

    def _jitter(self, n: int) -> np.ndarray:
        return self.rng.lognormal(0.0, 0.05, n)

    # --- kinds: each returns a plan, or None when the draw does not fit ---------------------------------------------

    def _resource_plan(self, kind: str, span: tuple[int, int], need_sigma: bool = True):
        r = self._resource()
        length = self._length(span)
        if r is None or length is None:
            return None
        t0 = self._start(length)
        cell = int(self.cell_of_res[r])
        if not self._established(r, t0, length) or not self._free(cell, t0, t0 + length):
            return None
        level, sigma = self._scale(r, t0)
        if not np.isfinite(level) or (need_sigma and not np.isfinite(sigma)):
            return None
        return r, cell, t0, length, level, sigma

    def plan_spike(self):
        return self._multiplicative("spike", self.spec.spike_days)

    def plan_level_shift(self):
        return self._multiplicative("level_shift", self.spec.shift_days)

    def _multiplicative(self, kind: str, span):
        base = self._resource_plan(kind, span)
        if base is None:
            return None
        r, cell, t0, length, _, sigma = base
        k, factor = self._sized_factor(sigma)
        factors = 1.0 + (factor - 1.0) * self._jitter(length)
        tail_end = t0 + length
        if kind == "level_shift" and self.rng.random() < self.spec.shift_persist_share:
            tail_end = self.n_days  # it stays: the new level is the new normal after the labelled window
            if not self._free(cell, t0, tail_end):
                return None
            factors = np.r_[factors, np.full(tail_end - t0 - length, factor)]
        return dict(kind=kind, cell=cell, t0=t0, length=length, tail_end=tail_end, resources=[r],
                    scale={s: factors for s in self.series_of[r]}, sigma=sigma, k=k, size=factor,
                    sku=self.p.keys.sku.iloc[self.main_series[r]])

    def plan_drift(self):
        base = self._resource_plan("drift", self.spec.drift_days, need_sigma=False)
        if base is None:
            return None
        r, cell, t0, length, _, sigma = base
        rate = float(self.rng.uniform(*self.spec.drift_rate))
        factors = (1.0 + rate) ** np.arange(1, length + 1)
        return dict(kind="drift", cell=cell, t0=t0, length=length, tail_end=t0 + length, resources=[r],
                    scale={s: factors for s in self.series_of[r]}, sigma=sigma, k=float("nan"),
                    size=float(factors[-1]), sku=self.p.keys.sku.iloc[self.main_series[r]])

    def plan_drop(self):
        base = self._resource_plan("drop", self.spec.drop_days, need_sigma=False)
        if base is None:
            return None
        r, cell, t0, length, _, sigma = base
        complete = self.rng.random() < self.spec.drop_complete_share
        remaining = 0.0 if complete else 1.0 - float(self.rng.uniform(*self.spec.drop_fraction))
        factors = np.full(length, np.nan if complete else remaining)
        return dict(kind="drop", cell=cell, t0=t0, length=length, tail_end=t0 + length, resources=[r],
                    scale={s: factors for s in self.series_of[r]}, sigma=sigma, k=float("nan"), size=remaining,
                    sku=self.p.keys.sku.iloc[self.main_series[r]])

    def plan_spread(self):
        r = self._resource()
        length = self._length(self.spec.spread_days)
        if r is None or length is None:
            return None
        t0 = self._start(length)
        cell = int(self.cell_of_res[r])
        if not self._free(cell, t0, t0 + length):
            return None
        members = [m for m in self.res_of_cell[cell] if self._established(m, t0, length)]
        if len(members) < self.spread_min:
            return None
        rise = float(self.rng.uniform(*self.spec.spread_rise))
        factors = np.full(length, 1.0 + rise)
        scale = {s: factors for m in members for s in self.series_of[m]}
        return dict(kind="spread", cell=cell, t0=t0, length=length, tail_end=t0 + length, resources=members,
                    scale=scale, sigma=float("nan"), k=float("nan"), size=1.0 + rise, sku="")

    def plan_new_sku(self):
        base = self._resource_plan("new_sku", self.spec.new_sku_days)
        if base is None:
            return None
        r, cell, t0, length, level, sigma = base
        billed = set(self.p.keys.sku.iloc[self.series_of[r]]) | {k["sku"] for k in self.added_keys
                                                                  if k["resource_name"] == self._name(r)}
        choices = [s for s in self.spec.new_skus if s not in billed]
        if not choices:
            return None
        sku = choices[int(self.rng.integers(len(choices)))]
        k, factor = self._sized_factor(sigma)
        own = self.res_cost[r, t0: t0 + length]
        own = np.where(np.isfinite(own) & (own > 0), own, level)
        values = (factor - 1.0) * own * self._jitter(length)
        key = {**self.res_keys.iloc[r].to_dict(), "sku": sku}
        return dict(kind="new_sku", cell=cell, t0=t0, length=length, tail_end=t0 + length, resources=[r],
                    add=[(key, values, int(self.main_series[r]))], sigma=sigma, k=k, size=factor, sku=sku)

    def plan_new_resource(self):
        base = self._resource_plan("new_resource", self.spec.new_resource_days, need_sigma=False)
        if base is None:
            return None
        r, cell, t0, length, level, _ = base
        lo, hi = self.spec.new_resource_level
        start = level * float(math.exp(self.rng.uniform(math.log(lo), math.log(hi))))
        growth = float(self.rng.uniform(*self.spec.new_resource_growth))
        values = start * (1.0 + growth) ** np.arange(length) * self._jitter(length)
        name = self._new_name(self._name(r))
        # The runaway resource bills the SKUs of the resource it copies, in the same shares.
        series = self.series_of[r]
        hist = np.nansum(self.clean[series, max(0, t0 - 28): t0], axis=1)
        shares = hist / hist.sum() if hist.sum() > 0 else np.full(len(series), 1.0 / len(series))
        add = [({**self.res_keys.iloc[r].to_dict(), "resource_name": name, "sku": self.p.keys.sku.iloc[s]},
                values * sh, int(s)) for s, sh in zip(series, shares) if sh > 0]
        return dict(kind="new_resource", cell=cell, t0=t0, length=length, tail_end=t0 + length, resources=[],
                    names=[name], add=add, sigma=float("nan"), k=float("nan"), size=start / level,
                    sku=self.p.keys.sku.iloc[self.main_series[r]])

    def _name(self, r: int) -> str:
        return self.res_keys.resource_name.iloc[r]

    def _new_name(self, like: str) -> str:
        while True:
            name = f"{like or 'runaway'}-{int(self.rng.integers(16 ** 4)):04x}"
            if name not in self.names:
                self.names.add(name)
                return name

    # --- applying a plan and writing its truth ----------------------------------------------------------------------

    def apply(self, plan: dict) -> None:
        t0, length, cell = plan["t0"], plan["length"], plan["cell"]
        labelled = slice(t0, t0 + length)
        delta = np.zeros(length)
        for s, factors in plan.get("scale", {}).items():
            span = slice(t0, t0 + len(factors))
            before = self.cost[s, span].copy()
            after = before * factors  # NaN factor: the series stops billing; absent days stay absent
            self.cost[s, span] = after
            delta += np.nan_to_num(after[:length]) - np.nan_to_num(before[:length])
        for key, values, template in plan.get("add", []):
            row = np.full(self.n_days, np.nan)
            row[labelled] = values
            self.added_keys.append(key)
            self.added_cost.append(row)
            self.added_template.append(template)
            delta += values
        self.busy[cell, max(0, t0 - self.spec.gap_days): min(self.n_days, plan["tail_end"] + self.spec.gap_days)] = True
        kind = plan["kind"]
        names = plan.get("names") or [self._name(r) for r in plan["resources"]]
        service, project = self.cells.iloc[cell]
        self.records.append(dict(
            kind=kind, direction=DIRECTION[kind], service=service, project_id=project, resource=";".join(sorted(names)),
            sku=plan["sku"], start=self.p.days[t0].date().isoformat(),
            end=self.p.days[t0 + length - 1].date().isoformat(), persists=bool(plan["tail_end"] > t0 + length),
            sigma=round(plan["sigma"], 4), sigma_multiple=round(plan["k"], 3), size=round(plan["size"], 4),
            injected_cost=round(float(delta.sum()), 4), _cell=cell, _t0=t0, _delta=delta))

    def truth(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        order = sorted(range(len(self.records)), key=lambda i: (self.records[i]["_t0"], self.records[i]["service"],
                                                                  self.records[i]["project_id"]))
        records, rows = [], []
        for n, i in enumerate(order, 1):
            rec = dict(self.records[i])
            cell, t0, delta = rec.pop("_cell"), rec.pop("_t0"), rec.pop("_delta")
            rec["anomaly_id"] = f"an-{n:04d}"
            records.append(rec)
            for j, d in enumerate(delta):
                expected = float(self.cell_clean[cell, t0 + j])
                rows.append(dict(date=self.p.days[t0 + j].date().isoformat(), service=rec["service"],
                                 project_id=rec["project_id"], anomaly_id=rec["anomaly_id"], kind=rec["kind"],
                                 direction=rec["direction"], injected_cost=round(float(d), 4),
                                 expected_cost=round(expected, 4), material=self.material(float(d), expected)))
        return (pd.DataFrame(records, columns=ANOMALY_COLUMNS), pd.DataFrame(rows, columns=CELL_COLUMNS))

    def material(self, delta: float, expected: float) -> bool:
        size = abs(delta)
        return bool(size > 0 and size >= self.spec.material_share * max(expected, 0.0)
                    and size >= self.spec.min_impact_usd)


def inject(panel: CostPanel, rng: np.random.Generator, n: int, spec: InjectionSpec | None = None,
           window: tuple[int, int] | None = None) -> Injection:
    """Inject `n` anomalies (kinds in proportion to `spec.kinds`) into a copy of `panel`, starting within `window`
    (day indices [lo, hi) of the panel; all days by default). An anomaly that finds no place (no resource with
    enough history, every cell taken) after `spec.max_tries` draws is skipped: `len(result.anomalies)` says how
    many were placed."""
    spec = spec or InjectionSpec()
    lo, hi = window if window is not None else (0, len(panel.days))
    lo, hi = max(0, int(lo)), min(len(panel.days), int(hi))
    if hi <= lo:
        raise FinopsError(f"The injection window [{lo}, {hi}) holds no day of the cost table.")
    inj = _Injector(panel, rng, spec, (lo, hi))
    for kind in kind_sequence(rng, n, spec.kinds):
        planner = getattr(inj, f"plan_{kind}")
        for _ in range(spec.max_tries):
            plan = planner()
            if plan is not None:
                inj.apply(plan)
                break
    anomalies, cells = inj.truth()
    keys, cost, template = panel.keys, inj.cost, np.arange(len(panel.keys))
    if inj.added_keys:
        keys = pd.concat([keys, pd.DataFrame(inj.added_keys, columns=SERIES_KEYS)], ignore_index=True)
        cost = np.vstack([cost, np.vstack(inj.added_cost)])
        template = np.r_[template, np.asarray(inj.added_template, int)]
    injected = CostPanel(panel.days, keys, cost, panel.has_sku)
    return Injection(panel, injected, template, anomalies, cells)


def inject_daily(daily: pd.DataFrame, rng: np.random.Generator, n: int, spec: InjectionSpec | None = None,
                 start=None, end=None) -> tuple[pd.DataFrame, Injection]:
    """`inject` on a daily cost table (the resource_daily_cost view): anomalies start between the days `start` and
    `end` (inclusive; the whole table by default). Returns the injected copy of the table and the injection."""
    panel = CostPanel.from_daily(daily)
    lo = 0 if start is None else int(panel.days.searchsorted(pd.Timestamp(start).tz_localize(None)))
    hi = len(panel.days) if end is None else int(panel.days.searchsorted(pd.Timestamp(end).tz_localize(None),
                                                                         side="right"))
    result = inject(panel, rng, n, spec, (lo, hi))
    return result.daily(), result


# --- events (line items) --------------------------------------------------------------------------------------------


def _event_frame(events: pa.Table) -> pd.DataFrame:
    """Per line item: its series keys, UTC day and net cost in USD (as feature_defs/resource_daily_cost.sql)."""
    credits = events.column("credits").combine_chunks()
    credit_sum = np.zeros(events.num_rows)
    flat = pc.list_flatten(credits)
    if len(flat):
        np.add.at(credit_sum, pc.list_parent_indices(credits).to_numpy(),
                  np.nan_to_num(pc.struct_field(flat, "amount").to_numpy(zero_copy_only=False).astype(float)))

    def field_of(column: str, name: str) -> np.ndarray:
        col = events.column(column).combine_chunks()
        return pc.struct_field(col, name).to_numpy(zero_copy_only=False)

    start = pd.to_datetime(events.column("usage_start_time").to_numpy(), utc=True)
    return pd.DataFrame({
        "service": field_of("service", "description"),
        "project_id": pd.Series(field_of("project", "id")).fillna("").to_numpy(),
        "resource_name": pd.Series(field_of("resource", "name")).fillna("").to_numpy(),
        "sku": field_of("sku", "description"),
        "day": start.tz_localize(None).normalize(),
        "net_cost": (events.column("cost").to_numpy() + credit_sum)
        / events.column("currency_conversion_rate").to_numpy(),
        "regular": events.column("cost_type").to_numpy(zero_copy_only=False) == "regular",
    })


def _scaled(row: dict, factor: float) -> dict:
    row = dict(row)
    row["cost"] = row["cost"] * factor
    row["credits"] = [{**c, "amount": c["amount"] * factor} for c in row.get("credits") or []]
    if row.get("cost_at_list") is not None:
        row["cost_at_list"] = row["cost_at_list"] * factor
    usage = row.get("usage")
    if usage:
        row["usage"] = {k: (v * factor if k in ("amount", "amount_in_pricing_units") and v is not None else v)
                        for k, v in usage.items()}
    return row


def _moved(row: dict, day: pd.Timestamp, net: float, key: dict, template_net: float) -> dict:
    """A new line item like `row` on `day` for the series `key`, billing `net` USD (no credits)."""
    first = pd.Timestamp(row["usage_start_time"])
    first = first.tz_localize("UTC") if first.tz is None else first.tz_convert("UTC")
    shift = day - first.tz_localize(None).normalize()
    rate = row["currency_conversion_rate"] or 1.0
    out = _scaled(row, net / template_net if template_net else 0.0)
    out["credits"] = []
    out["cost"] = net * rate
    out["cost_at_list"] = net * rate
    for f in ("usage_start_time", "usage_end_time", "export_time"):
        out[f] = row[f] + shift.to_pytimedelta()
    out["invoice"] = {**(row.get("invoice") or {}), "month": day.strftime("%Y%m")}
    if key["sku"] != row["sku"]["description"]:
        out["sku"] = {"id": "INJ-" + "".join(ch for ch in key["sku"].upper() if ch.isalnum())[:24],
                      "description": key["sku"]}
    name = (row.get("resource") or {}).get("name") or ""
    if key["resource_name"] != name:
        glob = (row.get("resource") or {}).get("global_name") or ""
        out["resource"] = {"name": key["resource_name"],
                           "global_name": glob.replace(name, key["resource_name"]) if glob and name else None}
    return out


def inject_events(events: pa.Table, rng: np.random.Generator, n: int, spec: InjectionSpec | None = None,
                  start=None, end=None) -> tuple[pa.Table, Injection]:
    """`inject_daily` on an events table (line items in the export's shape, with or without `event_id`): the
    regular line items are aggregated as the resource_daily_cost view does, anomalies injected, and the change
    written back as line items: existing items of a changed series-day are scaled (cost, credits, list cost, usage),
    items of a series that stops billing are removed, and new series (new SKUs, runaway resources) get new items
    copied from a line item of the series they were made from. Returns the new table (same schema; changed and
    new items at the end) and the injection, whose truth describes the events as the view will read them."""
    frame = _event_frame(events)
    regular = frame[frame.regular]
    if regular.empty:
        raise FinopsError("The events table has no regular line items: there is nothing to inject anomalies into.")
    daily = regular.groupby(["day", *SERIES_KEYS], as_index=False, sort=True)["net_cost"].sum()
    _, result = inject_daily(daily, rng, n, spec, start, end)
    clean, dirty = result.clean, result.panel
    n_clean = len(clean.keys)
    before = np.full(dirty.cost.shape, np.nan)
    before[:n_clean] = clean.cost
    changed = ~((np.isnan(before) & np.isnan(dirty.cost)) | np.isclose(before, dirty.cost, rtol=1e-12, atol=0.0))
    if not changed.any():
        return events, result
    s_idx, t_idx = np.nonzero(changed)
    series_index = pd.MultiIndex.from_frame(dirty.keys[SERIES_KEYS])
    row_series = np.full(len(frame), -1)
    row_series[frame.regular.to_numpy()] = series_index.get_indexer(pd.MultiIndex.from_frame(regular[SERIES_KEYS]))
    row_day = np.full(len(frame), -1)
    row_day[frame.regular.to_numpy()] = ((regular["day"] - dirty.days[0]) // pd.Timedelta(days=1)).to_numpy()
    cell_key = row_series.astype(np.int64) * len(dirty.days) + row_day
    changed_keys = s_idx.astype(np.int64) * len(dirty.days) + t_idx
    touched = (row_series >= 0) & np.isin(cell_key, changed_keys)
    # One line item of each series that new items are copied from (the template's latest item).
    templates = np.unique(result.template[s_idx])
    template_rows = {}
    for s in templates:
        rows = np.flatnonzero(row_series == s)
        if len(rows):
            template_rows[int(s)] = int(rows[-1])
    wanted = np.union1d(np.flatnonzero(touched), np.array(list(template_rows.values()), int))
    pylist = dict(zip(wanted.tolist(), events.take(pa.array(wanted)).to_pylist()))
    by_key: dict[int, list[int]] = {}
    for i in np.flatnonzero(touched):
        by_key.setdefault(int(cell_key[i]), []).append(int(i))
    net = frame["net_cost"].to_numpy()
    new_rows = []
    for s, t in zip(s_idx, t_idx):
        old, new = before[s, t], dirty.cost[s, t]
        rows = by_key.get(int(s) * len(dirty.days) + int(t), [])
        if np.isnan(new):
            continue  # the series stops billing that day: its items are dropped
        if rows and np.isfinite(old) and old != 0:
            new_rows += [_scaled(pylist[i], new / old) for i in rows]
            continue
        new_rows += [pylist[i] for i in rows]  # an item of zero net cost stays; the change is added beside it
        extra = new - (old if np.isfinite(old) else 0.0)
        t_row = template_rows.get(int(result.template[s]))
        if t_row is None:
            raise FinopsError("An injected series has no line item to copy from; this is a bug in the injector.")
        key = dirty.keys.iloc[s].to_dict()
        new_rows.append(_moved(pylist[t_row], dirty.days[t], extra, key, net[t_row]))
    kept = events.filter(pa.array(~touched))
    added = pa.Table.from_pylist(new_rows, schema=events.schema)
    if "event_id" in events.schema.names and len(added):
        added = _with_event_ids(added)
    return pa.concat_tables([kept, added]), result


def _with_event_ids(table: pa.Table) -> pa.Table:
    from finops_ml.data.events import BillingEvent, event_id

    rows = table.to_pylist()
    ids = [event_id(BillingEvent.model_validate({k: v for k, v in r.items() if k != "event_id"})) for r in rows]
    return table.set_column(table.schema.get_field_index("event_id"), "event_id", pa.array(ids, pa.string()))
